"""The outcome record of topic ``webhook-outcomes`` (CONTRACT section 5). Pure: no I/O."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from enum import StrEnum

import orjson

from consumer.delivery.retry_policy import AttemptResult
from consumer.errors import InvalidEvent
from consumer.events import ExamEvent
from consumer.records import record

SCHEMA_VERSION = 1


class Outcome(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    RETRY_SCHEDULED = "retry_scheduled"

    @property
    def final(self) -> bool:
        return self is not Outcome.RETRY_SCHEDULED


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-11-25T16:02:11.087Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@record(kw_only=True)
class OutcomeRecord:
    """One record of ``webhook-outcomes``; fields in the contract's order."""

    schema_version: int = SCHEMA_VERSION
    event_id: str | None
    test_id: str | None
    oid: str | None
    tracking_code: str | None
    trigger: str | None
    exam_status: str | None
    outcome: Outcome
    reason: str | None
    attempt: int
    http_status: int | None
    latency_ms: float | None
    endpoint_host: str | None
    event_occurred_at: str | None
    recorded_at: str
    next_attempt_at: str | None

    def to_json(self) -> bytes:
        # orjson writes a dataclass's fields in order, natively: no asdict() deep copy.
        return orjson.dumps(self)

    @property
    def key(self) -> bytes | None:
        return self.test_id.encode() if self.test_id else None


# An outcome must always fit in a Kafka record, whatever an event carried: echoed strings
# longer than this are cut (an oid of a megabyte would otherwise make the outcome unsendable).
MAX_ECHOED = 1024


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_ECHOED:
        return text
    return text[: MAX_ECHOED - 3] + "..."


def event_outcome(
    event: ExamEvent,
    trigger: str,
    outcome: Outcome,
    now: datetime,
    *,
    reason: str | None = None,
    attempt: int = 0,
    result: AttemptResult | None = None,
    endpoint_host: str | None = None,
    next_attempt_at: datetime | None = None,
) -> OutcomeRecord:
    """The outcome of a decision about a valid event."""
    return OutcomeRecord(
        event_id=_clip(event.event_id),
        test_id=_clip(event.test_id),
        oid=_clip(event.oid),
        tracking_code=_clip(event.tracking_code),
        trigger=trigger,
        exam_status=event.status.value,
        outcome=outcome,
        reason=reason,
        attempt=attempt,
        http_status=result.status if result else None,
        latency_ms=round(result.latency_ms, 1) if result else None,
        endpoint_host=endpoint_host,
        event_occurred_at=event.occurred_at_text,
        recorded_at=format_timestamp(now),
        next_attempt_at=format_timestamp(next_attempt_at) if next_attempt_at else None,
    )


def rejected_outcome(exc: InvalidEvent, key: bytes | None, now: datetime) -> OutcomeRecord | None:
    """The ``rejected`` outcome of an invalid event, or None when its event_id is unreadable."""
    event_id = exc.known.get("event_id")
    if event_id is None:
        return None
    test_id = exc.known.get("test_id")
    if test_id is None and key is not None:
        with contextlib.suppress(UnicodeDecodeError):
            test_id = key.decode()
    return OutcomeRecord(
        event_id=_clip(event_id),
        test_id=_clip(test_id),
        oid=_clip(exc.known.get("oid")),
        tracking_code=_clip(exc.known.get("tracking_code")),
        trigger=None,
        exam_status=None,
        outcome=Outcome.REJECTED,
        reason="invalid_event",
        attempt=0,
        http_status=None,
        latency_ms=None,
        endpoint_host=None,
        event_occurred_at=_clip(exc.known.get("occurred_at")),
        recorded_at=format_timestamp(now),
        next_attempt_at=None,
    )
