"""``OutcomeRecord``: the record of topic ``webhook-outcomes`` (CONTRACT section 5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from consumer.events import parse_event
from consumer.outcomes import (
    MAX_ECHOED,
    Outcome,
    event_outcome,
    format_timestamp,
)
from tests.factories import CONTRACT_OUTCOME
from tests.factories import outcome_record as record
from tests.strategies import contract_example

CONTRACT_KEYS = [
    "schema_version",
    "event_id",
    "test_id",
    "oid",
    "tracking_code",
    "trigger",
    "exam_status",
    "outcome",
    "reason",
    "attempt",
    "http_status",
    "latency_ms",
    "endpoint_host",
    "event_occurred_at",
    "recorded_at",
    "next_attempt_at",
]


def test_contract_example_serialises_exactly() -> None:
    """The contract's example record comes out with its keys in order and its values."""
    assert orjson.loads(record().to_json()) == CONTRACT_OUTCOME


def test_to_json_has_exactly_the_contract_keys_schema_version_first() -> None:
    """Every documented key is present, none other, ``schema_version`` first."""
    assert list(orjson.loads(record().to_json())) == CONTRACT_KEYS


def test_rejected_record_keeps_every_key_as_null() -> None:
    """A record with little known still carries every key, unknown ones as null."""
    rejected = record(
        test_id=None,
        oid=None,
        tracking_code=None,
        trigger=None,
        exam_status=None,
        outcome=Outcome.REJECTED,
        reason="invalid_event",
        attempt=0,
        http_status=None,
        latency_ms=None,
        endpoint_host=None,
        event_occurred_at=None,
    )
    doc = orjson.loads(rejected.to_json())
    assert list(doc) == CONTRACT_KEYS
    assert (doc["outcome"], doc["reason"], doc["test_id"]) == ("rejected", "invalid_event", None)
    assert rejected.key is None


def test_key_is_the_test_id() -> None:
    """The outcome is keyed by the test id in UTF-8."""
    assert record(test_id="Prüfung").key == "Prüfung".encode()


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 25, 16, 2, 11, 87000, tzinfo=UTC), "2026-11-25T16:02:11.087Z"),
        (datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC), "2026-11-25T16:02:11.000Z"),
        (datetime(2026, 11, 25, 16, 2, 11, 87999, tzinfo=UTC), "2026-11-25T16:02:11.087Z"),
        (
            datetime(2026, 11, 25, 21, 32, 11, 87000, tzinfo=timezone(timedelta(hours=5.5))),
            "2026-11-25T16:02:11.087Z",
        ),
    ],
)
def test_format_timestamp_is_utc_with_milliseconds(moment: datetime, text: str) -> None:
    """Timestamps are RFC 3339 in UTC with exactly three fraction digits and ``Z``."""
    assert format_timestamp(moment) == text


@pytest.mark.parametrize(
    ("outcome", "final"),
    [
        (Outcome.DELIVERED, True),
        (Outcome.FAILED, True),
        (Outcome.SKIPPED, True),
        (Outcome.REJECTED, True),
        (Outcome.RETRY_SCHEDULED, False),
    ],
)
def test_only_retry_scheduled_is_not_final(outcome: Outcome, final: bool) -> None:
    """``delivered``, ``failed``, ``skipped`` and ``rejected`` end a trigger's story."""
    assert outcome.final is final


def test_outcome_names_are_the_contract_spellings() -> None:
    assert {o.value for o in Outcome} == {
        "delivered",
        "failed",
        "skipped",
        "rejected",
        "retry_scheduled",
    }


def test_echoed_strings_are_clipped_so_an_outcome_always_fits() -> None:
    """A megabyte oid is cut in the outcome; the outcome stays small."""
    doc = {**contract_example(), "oid": "x" * 1_000_000}
    event = parse_event(orjson.dumps(doc), b"50613490BP")
    record = event_outcome(event, "completed", Outcome.DELIVERED, datetime.now(UTC))
    assert record.oid is not None
    assert len(record.oid) == MAX_ECHOED
    assert record.oid.endswith("...")
    assert len(record.to_json()) < 4 * MAX_ECHOED
