"""What ``itep-webhooks outcomes`` makes of outcome records. Pure: no I/O.

A record is the decoded JSON object of topic ``webhook-outcomes`` (CONTRACT section 5), read
leniently: a field that is missing or of another type counts as absent, so that a record from a
newer schema, or a hand-made one, is still shown and counted as far as it can be.

- ``decode_record`` bytes -> the record, or None when it is not a JSON object with an outcome.
- ``OutcomeFilter`` the ``--tracking-code`` / ``--test-id`` / ``--outcome`` selection.
- ``format_line`` one readable line of ``outcomes tail``.
- ``OutcomeSummary`` the tally of ``outcomes summary``: records in, ``SummaryRow`` per group out;
  ``format_table`` lays the rows out.

Counting rules: each final outcome (delivered, failed, skipped, rejected) counts once in its
column; ``retries`` counts ``retry_scheduled`` records. The success ratio is delivered over final
outcomes, rounded down to 0.1 % (so 100.0 % means no failure at all). Latency percentiles are
over every record that carries a ``latency_ms`` (each is one HTTP attempt, retried ones
included), by the nearest-rank method: the smallest value with at least p % of the values at or
below it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from consumer.outcomes import Outcome

FINAL_OUTCOMES: Final = (Outcome.DELIVERED, Outcome.FAILED, Outcome.SKIPPED, Outcome.REJECTED)
# ``--by`` choice -> the record field it groups on.
GROUPINGS: Final[Mapping[str, str]] = {
    "tracking-code": "tracking_code",
    "trigger": "trigger",
    "reason": "reason",
}
TOTAL_LABEL: Final = "total"
NONE_SHOWN: Final = "-"
_OUTCOME_WIDTH: Final = max(len(outcome.value) for outcome in Outcome)
_BAR_WIDTH: Final = 30

Record = Mapping[str, Any]


def decode_record(value: bytes | None) -> dict[str, Any] | None:
    """The outcome record in ``value``, or None when it is not a JSON object with an outcome."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("outcome"), str):
        return None
    return doc


def _text(doc: Record, name: str) -> str | None:
    value = doc.get(name)
    return value if isinstance(value, str) else None


def _number(doc: Record, name: str) -> float | None:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def printable(value: object) -> str:
    """``value`` as text, ``-`` for None; control characters escaped so a line stays a line."""
    if value is None:
        return NONE_SHOWN
    # Ids come from upstream events: a control character must not garble the output.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(value))


# ---------------------------------------------------------------------------------- selecting


@dataclass(frozen=True, slots=True)
class OutcomeFilter:
    """Which records to keep: every non-empty selector must match, any one of its values."""

    tracking_codes: frozenset[str] = frozenset()
    test_ids: frozenset[str] = frozenset()
    outcomes: frozenset[str] = frozenset()

    def matches(self, doc: Record) -> bool:
        for values, name in (
            (self.tracking_codes, "tracking_code"),
            (self.test_ids, "test_id"),
            (self.outcomes, "outcome"),
        ):
            if values and _text(doc, name) not in values:
                return False
        return True


# ------------------------------------------------------------------------------------- a line


def format_line(doc: Record, published_at: datetime) -> str:
    """One readable line: time, outcome, reason, code, test, event, attempt, status, latency.

    The time is the record's ``recorded_at``, or ``published_at`` (the Kafka timestamp) when
    it has none.
    """
    when = _text(doc, "recorded_at") or published_at.astimezone(UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    attempt = _number(doc, "attempt")
    status = _number(doc, "http_status")
    latency = _number(doc, "latency_ms")
    return " ".join(
        (
            printable(when),
            printable(_text(doc, "outcome")).ljust(_OUTCOME_WIDTH),
            f"reason={printable(_text(doc, 'reason'))}",
            f"code={printable(_text(doc, 'tracking_code'))}",
            f"test={printable(_text(doc, 'test_id'))}",
            f"event={printable(_text(doc, 'event_id'))}",
            f"attempt={NONE_SHOWN if attempt is None else f'{attempt:g}'}",
            f"http={NONE_SHOWN if status is None else f'{status:g}'}",
            f"latency={NONE_SHOWN if latency is None else f'{latency:.1f}ms'}",
        )
    )


# ---------------------------------------------------------------------------------- summarising


def percentile(ordered: Sequence[float], percent: float) -> float | None:
    """The nearest-rank ``percent`` percentile of ``ordered`` (sorted ascending); None if empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of the summary table; ``group`` None is records without the grouped field."""

    group: str | None
    delivered: int
    failed: int
    skipped: int
    rejected: int
    retries: int
    success_ratio: float | None
    p50_ms: float | None
    p99_ms: float | None


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def add(self, doc: Record) -> None:
        outcome = _text(doc, "outcome")
        if outcome is not None:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        latency = _number(doc, "latency_ms")
        if latency is not None:
            self.latencies.append(latency)

    def row(self, group: str | None) -> SummaryRow:
        finals = [self.counts.get(outcome, 0) for outcome in FINAL_OUTCOMES]
        delivered = finals[0]
        ordered = sorted(self.latencies)
        return SummaryRow(
            group=group,
            delivered=delivered,
            failed=finals[1],
            skipped=finals[2],
            rejected=finals[3],
            retries=self.counts.get(Outcome.RETRY_SCHEDULED, 0),
            success_ratio=delivered / sum(finals) if sum(finals) else None,
            p50_ms=percentile(ordered, 50),
            p99_ms=percentile(ordered, 99),
        )


class OutcomeSummary:
    """The tally of a window of outcome records, grouped by one field (a ``GROUPINGS`` key)."""

    def __init__(self, by: str) -> None:
        self.field = GROUPINGS[by]
        self.records = 0
        self._groups: dict[str | None, _Tally] = {}
        self._total = _Tally()

    def add(self, doc: Record) -> None:
        self.records += 1
        group = _text(doc, self.field)
        self._groups.setdefault(group, _Tally()).add(doc)
        self._total.add(doc)

    def add_all(self, docs: Iterable[Record]) -> OutcomeSummary:
        for doc in docs:
            self.add(doc)
        return self

    def rows(self) -> list[SummaryRow]:
        """One row per group, by name; records without the field last."""
        names = sorted(self._groups, key=lambda name: (name is None, name or ""))
        return [self._groups[name].row(name) for name in names]

    def total(self) -> SummaryRow:
        return self._total.row(TOTAL_LABEL)


def _ratio(value: float | None) -> str:
    if value is None:
        return NONE_SHOWN
    return f"{math.floor(value * 1000) / 10:.1f}%"


def _millis(value: float | None) -> str:
    return NONE_SHOWN if value is None else f"{value:.1f}"


def _cells(row: SummaryRow) -> tuple[str, ...]:
    return (
        printable(row.group),
        str(row.delivered),
        str(row.failed),
        str(row.skipped),
        str(row.rejected),
        str(row.retries),
        _ratio(row.success_ratio),
        _millis(row.p50_ms),
        _millis(row.p99_ms),
    )


def format_table(rows: Sequence[SummaryRow], total: SummaryRow, by: str) -> list[str]:
    """The table: a header, a row per group, the total row; names left, numbers right."""
    header = (
        by.replace("-", "_").upper(),
        "DELIVERED",
        "FAILED",
        "SKIPPED",
        "REJECTED",
        "RETRIES",
        "SUCCESS",
        "P50_MS",
        "P99_MS",
    )
    table = [header, *(_cells(row) for row in rows), _cells(total)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in table
    ]


def format_window(topic: str, since: str, until: str, records: int) -> str:
    """The line above the table: what was read."""
    noun = "record" if records == 1 else "records"
    return f"{printable(topic)} from {since} to {until}: {records} outcome {noun}"


def format_progress(done: int, total: int, *, bar: bool) -> str:
    """``reading [####----] 120/400 records`` (``bar``), else ``read 120/400 records``."""
    if not bar:
        return f"read {done}/{total} records"
    filled = _BAR_WIDTH * done // total if total else _BAR_WIDTH
    return f"reading [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {done}/{total} records"
