"""``outcome_summary``: what ``itep-webhooks outcomes`` makes of outcome records, plain values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from consumer.admin.outcome_summary import (
    GROUPINGS,
    OutcomeFilter,
    OutcomeSummary,
    SummaryRow,
    decode_record,
    format_line,
    format_progress,
    format_table,
    format_window,
    percentile,
)

PUBLISHED = datetime(2026, 12, 2, 7, 0, 1, 250_000, tzinfo=UTC)


def doc(outcome: str = "delivered", **fields: Any) -> dict[str, Any]:
    """An outcome record as decoded from the topic; ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "evt-1",
        "test_id": "T1",
        "oid": "crm-1",
        "tracking_code": "ACME",
        "trigger": "completed",
        "exam_status": "Complete",
        "outcome": outcome,
        "reason": None if outcome == "delivered" else "http_503",
        "attempt": 1,
        "http_status": 200 if outcome == "delivered" else 503,
        "latency_ms": 10.0,
        "endpoint_host": "hooks.example.edu",
        "event_occurred_at": "2026-12-02T07:00:00Z",
        "recorded_at": "2026-12-02T07:00:00.087Z",
        "next_attempt_at": None,
    }
    values.update(fields)
    return values


def summarise(by: str, *docs: dict[str, Any]) -> OutcomeSummary:
    return OutcomeSummary(by).add_all(docs)


def row_of(summary: OutcomeSummary, group: str | None) -> SummaryRow:
    (row,) = [row for row in summary.rows() if row.group == group]
    return row


# ------------------------------------------------------------------------------ decode, filter


def test_decode_record_reads_an_outcome_record() -> None:
    """A JSON object with a string ``outcome`` comes back as that object."""
    assert decode_record(orjson.dumps(doc("failed"))) == doc("failed")


@pytest.mark.parametrize(
    "value",
    [None, b"", b"not json", b"[1, 2]", b'"delivered"', b'{"event_id": "e"}', b'{"outcome": 3}'],
)
def test_decode_record_refuses_what_is_not_an_outcome(value: bytes | None) -> None:
    """Not JSON, not an object, or no string outcome: None."""
    assert decode_record(value) is None


def test_an_empty_filter_matches_every_record() -> None:
    """No selector: everything passes, even a record without the selected fields."""
    assert OutcomeFilter().matches(doc())
    assert OutcomeFilter().matches({"outcome": "delivered"})


def test_a_repeated_selector_matches_any_of_its_values() -> None:
    """Two tracking codes: a record of either matches, one of a third does not."""
    selection = OutcomeFilter(tracking_codes=frozenset({"A", "B"}))
    assert selection.matches(doc(tracking_code="A"))
    assert selection.matches(doc(tracking_code="B"))
    assert not selection.matches(doc(tracking_code="C"))
    assert not selection.matches(doc(tracking_code=None))


def test_different_selectors_must_all_match() -> None:
    """Code, test id and outcome together: a record must match all three."""
    selection = OutcomeFilter(
        tracking_codes=frozenset({"A"}), test_ids=frozenset({"T1"}), outcomes=frozenset({"failed"})
    )
    assert selection.matches(doc("failed", tracking_code="A", test_id="T1"))
    assert not selection.matches(doc("delivered", tracking_code="A", test_id="T1"))
    assert not selection.matches(doc("failed", tracking_code="A", test_id="T2"))
    assert not selection.matches(doc("failed", tracking_code="B", test_id="T1"))


# -------------------------------------------------------------------------------------- a line


def test_a_line_shows_the_fields_in_order() -> None:
    """Time, outcome, reason, code, test, event, attempt, status, latency, in that order."""
    line = format_line(
        doc("failed", reason="http_404", attempt=2, http_status=404, latency_ms=12.44), PUBLISHED
    )
    assert line == (
        "2026-12-02T07:00:00.087Z failed          reason=http_404 code=ACME test=T1 "
        "event=evt-1 attempt=2 http=404 latency=12.4ms"
    )


def test_a_line_shows_absent_fields_as_a_dash_and_the_kafka_time_without_recorded_at() -> None:
    """A skipped record (no status, no latency) and no recorded_at: dashes and the Kafka time."""
    record = doc(
        "skipped", reason="no_tracking_code", tracking_code=None, attempt=0, recorded_at=None
    )
    record.update(http_status=None, latency_ms=None)
    assert format_line(record, PUBLISHED) == (
        "2026-12-02T07:00:01.250Z skipped         reason=no_tracking_code code=- test=T1 "
        "event=evt-1 attempt=0 http=- latency=-"
    )


def test_a_line_escapes_control_characters() -> None:
    """A newline in an id from upstream stays on the one line, escaped."""
    line = format_line(doc(test_id="T1\nfake line"), PUBLISHED)
    assert "\n" not in line
    assert "test=T1\\x0afake line" in line


# ---------------------------------------------------------------------------------- percentiles


def test_percentile_is_nearest_rank() -> None:
    """Of 1..100, p50 is 50 and p99 is 99; of 1..10, p99 is 10 and p50 is 5."""
    hundred = [float(n) for n in range(1, 101)]
    ten = [float(n) for n in range(1, 11)]
    assert percentile(hundred, 50) == 50.0
    assert percentile(hundred, 99) == 99.0
    assert percentile(ten, 50) == 5.0
    assert percentile(ten, 99) == 10.0


def test_percentile_of_one_value_is_that_value_and_of_none_is_none() -> None:
    """A single latency is every percentile of itself; no latency gives None."""
    assert percentile([7.5], 50) == 7.5
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None


# ------------------------------------------------------------------------------------- tallying


def test_each_outcome_is_counted_in_its_column_per_tracking_code() -> None:
    """Delivered, failed, skipped, rejected and retry_scheduled land in their own columns."""
    summary = summarise(
        "tracking-code",
        doc("delivered"),
        doc("delivered"),
        doc("failed"),
        doc("skipped"),
        doc("rejected"),
        doc("retry_scheduled"),
        doc("retry_scheduled"),
        doc("retry_scheduled"),
        doc("delivered", tracking_code="OTHER"),
    )
    acme = row_of(summary, "ACME")
    counts = (acme.delivered, acme.failed, acme.skipped, acme.rejected, acme.retries)
    assert counts == (2, 1, 1, 1, 3)
    other = row_of(summary, "OTHER")
    assert (other.delivered, other.failed, other.retries) == (1, 0, 0)
    assert summary.records == 9


def test_success_ratio_is_delivered_over_final_outcomes() -> None:
    """3 delivered, 1 failed: 0.75, whatever the number of retries before them."""
    summary = summarise(
        "tracking-code",
        *[doc("delivered")] * 3,
        doc("failed"),
        *[doc("retry_scheduled")] * 10,
    )
    assert row_of(summary, "ACME").success_ratio == 0.75


def test_a_group_with_only_retries_has_no_success_ratio() -> None:
    """Retries are not final: with no final outcome the ratio is None, shown as a dash."""
    summary = summarise("tracking-code", doc("retry_scheduled"))
    row = row_of(summary, "ACME")
    assert row.success_ratio is None
    assert format_table([row], summary.total(), "tracking-code")[1].split()[6] == "-"


def test_latency_percentiles_cover_every_attempt_and_skip_records_without_one() -> None:
    """Retried and final attempts count; a skipped record without latency does not."""
    summary = summarise(
        "tracking-code",
        doc("retry_scheduled", latency_ms=1000.0),
        doc("delivered", latency_ms=10.0),
        doc("delivered", latency_ms=20.0),
        doc("skipped", latency_ms=None),
    )
    row = row_of(summary, "ACME")
    assert row.p50_ms == 20.0
    assert row.p99_ms == 1000.0


def test_a_latency_that_is_not_a_number_is_ignored() -> None:
    """A string or a boolean latency_ms (a hand-made record) is not a latency."""
    summary = summarise(
        "tracking-code", doc(latency_ms="fast"), doc(latency_ms=True), doc(latency_ms=5)
    )
    row = row_of(summary, "ACME")
    assert (row.p50_ms, row.p99_ms, row.delivered) == (5.0, 5.0, 3)


@pytest.mark.parametrize(("by", "field"), list(GROUPINGS.items()))
def test_records_group_by_the_chosen_field(by: str, field: str) -> None:
    """``--by`` groups on its field: two values, two rows, each with its own records."""
    summary = summarise(by, doc(**{field: "x"}), doc(**{field: "x"}), doc(**{field: "y"}))
    assert [row.group for row in summary.rows()] == ["x", "y"]
    assert [row.delivered for row in summary.rows()] == [2, 1]


def test_records_without_the_grouped_field_form_the_last_group() -> None:
    """By reason, delivered records (reason null) are one group, after the named ones."""
    summary = summarise(
        "reason",
        doc("delivered"),
        doc("failed", reason="timeout"),
        doc("failed", reason="http_404"),
    )
    assert [row.group for row in summary.rows()] == ["http_404", "timeout", None]
    assert format_table(summary.rows(), summary.total(), "reason")[3].startswith("-  ")


def test_the_total_row_adds_up_every_group() -> None:
    """Counts are summed; ratio and percentiles are over all records, not averaged."""
    summary = summarise(
        "tracking-code",
        doc("delivered", tracking_code="A", latency_ms=1.0),
        doc("failed", tracking_code="B", latency_ms=100.0),
        doc("failed", tracking_code="B", latency_ms=200.0),
        doc("retry_scheduled", tracking_code="B", latency_ms=300.0),
    )
    total = summary.total()
    assert (total.group, total.delivered, total.failed, total.retries) == ("total", 1, 2, 1)
    assert total.success_ratio == pytest.approx(1 / 3)
    assert (total.p50_ms, total.p99_ms) == (100.0, 300.0)


# ------------------------------------------------------------------------------------ the table


def test_an_empty_window_prints_the_header_and_a_zero_total() -> None:
    """No records: no group rows, a total of zeros, dashes for ratio and latencies."""
    summary = OutcomeSummary("trigger")
    lines = format_table(summary.rows(), summary.total(), "trigger")
    assert [line.split() for line in lines] == [
        [
            "TRIGGER",
            "DELIVERED",
            "FAILED",
            "SKIPPED",
            "REJECTED",
            "RETRIES",
            "SUCCESS",
            "P50_MS",
            "P99_MS",
        ],
        ["total", "0", "0", "0", "0", "0", "-", "-", "-"],
    ]


def test_the_table_aligns_names_left_and_numbers_right() -> None:
    """Every line ends its number columns at the same place; the header names the grouping."""
    summary = summarise(
        "tracking-code",
        *[doc("delivered", tracking_code="A-LONG-CODE", latency_ms=1234.5)] * 12,
        doc("failed", tracking_code="B"),
    )
    lines = format_table(summary.rows(), summary.total(), "tracking-code")
    assert lines[0].startswith("TRACKING_CODE  ")
    assert lines[1].startswith("A-LONG-CODE  ")
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split() == [
        "A-LONG-CODE",
        "12",
        "0",
        "0",
        "0",
        "0",
        "100.0%",
        "1234.5",
        "1234.5",
    ]
    assert lines[3].split()[:3] == ["total", "12", "1"]


@pytest.mark.parametrize(
    ("delivered", "failed", "shown"),
    [(1, 0, "100.0%"), (1, 1, "50.0%"), (2, 1, "66.6%"), (1999, 1, "99.9%"), (0, 4, "0.0%")],
)
def test_the_success_ratio_is_rounded_down_to_a_tenth_of_a_percent(
    delivered: int, failed: int, shown: str
) -> None:
    """100.0% only without any failure: 1999 of 2000 shows 99.9%, not 100.0%."""
    summary = summarise("tracking-code", *[doc("delivered")] * delivered, *[doc("failed")] * failed)
    assert format_table(summary.rows(), summary.total(), "tracking-code")[1].split()[6] == shown


def test_the_window_line_says_what_was_read() -> None:
    """Topic, window and the number of records, singular for one."""
    assert (
        format_window("webhook-outcomes", "2026-12-02T06:00:00Z", "2026-12-02T07:00:00Z", 1)
        == "webhook-outcomes from 2026-12-02T06:00:00Z to 2026-12-02T07:00:00Z: 1 outcome record"
    )


def test_progress_is_a_bar_on_a_terminal_and_a_plain_line_otherwise() -> None:
    """Half done: half the bar filled; without a terminal, the counts alone."""
    assert format_progress(50, 100, bar=True) == f"reading [{'#' * 15}{'-' * 15}] 50/100 records"
    assert format_progress(50, 100, bar=False) == "read 50/100 records"
