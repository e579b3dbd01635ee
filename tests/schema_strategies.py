"""The JSON Schemas of ``schemas/`` and hypothesis strategies that probe them.

``validator(name)`` loads one schema. ``event_documents()`` draws what may arrive on
``exam-events``: valid events from ``tests.strategies.event_dicts`` and the same events broken
in one to three places (a field removed, or set to a value of the wrong type, out of range, a
near-miss timestamp or date, a bad enum, an unknown section), and now and then a value that is
no object at all. ``outcome_records()`` draws outcome records as the service's callers build
them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from consumer.delivery.retry_policy import AttemptResult, failure_reason
from consumer.events import SECTION_NAMES, ExamEvent, parse_event
from consumer.outcomes import Outcome, OutcomeRecord, event_outcome
from consumer.triggers import candidate_trigger
from tests.strategies import (
    COMPLETE_NAMES,
    STATUS_NAMES,
    encode_event,
    event_dicts,
    finished_on_dates,
    results_dicts,
    rfc3339_timestamps,
    section_dicts,
    texts,
)

SCHEMAS_DIR: Final = Path(__file__).resolve().parents[1] / "schemas"
SCHEMA_FILES: Final = (
    "exam-event.schema.json",
    "outcome.schema.json",
    "dead-letter-headers.schema.json",
    "webhook-data.schema.json",
)


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))
    return schema


def validator(name: str) -> Draft202012Validator:
    """A draft 2020-12 validator of ``schemas/<name>``; it also asserts ``format`` where
    jsonschema has a checker at hand (``date``; ``date-time`` needs rfc3339-validator)."""
    return Draft202012Validator(
        load_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


# --------------------------------------------------------------------------------------------
# Broken events

DELETE: Final = object()
"""A mutation "value" that removes the key instead of setting it."""

_ODD_SCALARS: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    1,
    -1,
    -0.0,
    0.5,
    -0.5,
    1.0,
    5.99,
    6,
    6.000001,
    99.5,
    100,
    100.0,
    100.001,
    87.5,
    10**15 + 0.5,
    2**63 - 1,
    -(2**63),
    "",
    " ",
    "x",
    "\n",
    "\x00",
    "é",
    "Complete",
    "completed",
    "reset",
    "Reset",
    "status_changed",
    "2026-11-25",
    "2026-11-25T16:02:11Z",
    "87",
    "1",
)


def odd_values() -> st.SearchStrategy[Any]:
    """Any JSON value, biased to boundaries and to values of the wrong type."""
    scalars = st.one_of(
        st.sampled_from(_ODD_SCALARS),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
        texts(max_size=8),
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=2),
        st.dictionaries(st.sampled_from(("level", "cefr", "a")), scalars, max_size=2),
    )


_DIGIT_TWINS: Final = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")  # Arabic-Indic digits


_YEARS: Final = (
    *("0000", "0001", "1600", "1800", "1896", "1899", "1900", "1901", "1904", "2000"),
    *("2023", "2024", "2100", "2400", "9999", "19001", "202", "20x6"),
)
_MONTH_DAYS: Final = (
    *(("02", "29"), ("02", "29"), ("02", "29"), ("02", "28"), ("02", "30")),
    *(("04", "30"), ("04", "31"), ("11", "31"), ("12", "31"), ("01", "32")),
    *(("13", "01"), ("00", "10"), ("06", "00"), ("1", "05"), ("06", "9")),
)


@st.composite
def near_dates(draw: st.DrawFn) -> str:
    """``YYYY-MM-DD`` with every part near or past its bounds (Feb 29, year 1900, day 32)."""
    year = draw(
        st.one_of(
            st.sampled_from(_YEARS),
            st.integers(min_value=0, max_value=9999).map("{:04d}".format),
        )
    )
    month, day = draw(
        st.one_of(
            st.sampled_from(_MONTH_DAYS),
            st.tuples(
                st.integers(min_value=1, max_value=12).map("{:02d}".format),
                st.integers(min_value=1, max_value=31).map("{:02d}".format),
            ),
        )
    )
    text = f"{year}-{month}-{day}"
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        text = text.translate(_DIGIT_TWINS)
    return text


_TIMESTAMP_PARTS: Final[dict[str, tuple[str, ...]]] = {
    "date": ("0001-01-01", "9999-12-31", "1900-12-31", "1901-01-01", "1900-06-15", "0000-01-01"),
    "separator": ("T", "t", " ", "x", "", "TT"),
    "hour": ("00", "23", "24", "9", "٠٩"),
    "minute": (":00", ":59", ":60", ""),
    "second": (":00", ":59", ":60", "", ":5"),
    "fraction": ("", ".", ".5", ".1234567890", ".5.5"),
    "zone": (
        *("Z", "z", "", "+00:00", "-00:00", "+23:59", "-23:59", "+23:60", "+24:00", "-24:00"),
        *("+22:99", "+05:99", "+5:00", "+0500", "+05", "Z+01:00"),
    ),
    "suffix": ("", "\n", " ", "Z", "\x00"),
}


@st.composite
def near_timestamps(draw: st.DrawFn) -> str:
    """A timestamp with one part at or past the edge of what the parser reads: a near-miss date,
    hour 24, a leap second, an offset of 24 hours or with 99 minutes, a missing part, a
    trailing newline, years 1, 1900 and 9999. Now and then two parts at once."""
    parts = {
        "date": draw(finished_on_dates()),
        "separator": "T",
        "hour": f"{draw(st.integers(min_value=0, max_value=23)):02d}",
        "minute": f":{draw(st.integers(min_value=0, max_value=59)):02d}",
        "second": f":{draw(st.integers(min_value=0, max_value=59)):02d}",
        "fraction": "",
        "zone": "Z",
        "suffix": "",
    }
    for _ in range(draw(st.sampled_from((1, 1, 1, 2)))):
        part = draw(st.sampled_from(tuple(_TIMESTAMP_PARTS)))
        if part == "date" and draw(st.booleans()):
            parts["date"] = draw(near_dates())
        else:
            parts[part] = draw(st.sampled_from(_TIMESTAMP_PARTS[part]))
    return "".join(parts.values())


_STATUS_LIKE: Final = st.sampled_from(
    (*STATUS_NAMES, "Started", "Technical Difficulty", "Completed", "complete", "Done", "")
)

_NUMBERS_NEAR_BOUNDS: Final = st.sampled_from(
    (-1, -0.5, -0.0, 0, 0.0, 2, 5.5, 6, 6.0000001, 7, 99.9, 100, 100.5, 10**12, 0.25)
)

# What to set at a path whose last name is this, besides odd values.
_NEAR_VALUES: Final[dict[str, st.SearchStrategy[Any]]] = {
    "occurred_at": st.one_of(near_timestamps(), rfc3339_timestamps()),
    "finished_on": st.one_of(near_dates(), finished_on_dates()),
    "status": _STATUS_LIKE,
    "previous_status": _STATUS_LIKE,
    "event_type": st.sampled_from(("reset", "status_changed", "Reset", "")),
    "reset_type": st.sampled_from(("full", "", None)),
    "event_id": st.one_of(texts(min_size=1, max_size=8), st.sampled_from(("a\x7f", "a\tb"))),
    "schema_version": st.sampled_from((1, 2, 0, 1.0, "1", True)),
    "duration_minutes": _NUMBERS_NEAR_BOUNDS,
    "level": _NUMBERS_NEAR_BOUNDS,
    "score": _NUMBERS_NEAR_BOUNDS,
    "percent": _NUMBERS_NEAR_BOUNDS,
    "question_count": _NUMBERS_NEAR_BOUNDS,
    "cefr": st.sampled_from(("", "B2", None)),
}

TOP_FIELDS: Final = (
    "schema_version",
    "event_id",
    "event_type",
    "occurred_at",
    "test_id",
    "oid",
    "tracking_code",
    "status",
    "previous_status",
    "reset_type",
    "duration_minutes",
    "finished_on",
    "results",
    "x_future_field",
)
# ``{section}`` stands for one of the five sections or an unknown one.
RESULT_PATHS: Final = (
    "results.score_report_url",
    "results.overall",
    "results.overall.level",
    "results.overall.cefr",
    "results.x_note",
    "results.sections",
    "results.sections.{section}",
    "results.sections.writing.question_count",
    *(
        f"results.sections.{{section}}.{key}"
        for key in ("level", "score", "percent", "cefr", "question_count", "x_note")
    ),
)
PATHS: Final = TOP_FIELDS + RESULT_PATHS
_SECTION_NAMES: Final = st.sampled_from(
    ("grammar", "listening", "reading", "writing", "speaking", "essay")
)


def set_path(doc: dict[str, Any], path: str, value: object) -> None:
    """Set (or with ``DELETE`` remove) the value at a dotted path, making parents objects."""
    *parents, last = path.split(".")
    target = doc
    for name in parents:
        if not isinstance(target.get(name), dict):
            target[name] = {}
        target = target[name]
    if value is DELETE:
        target.pop(last, None)
    else:
        target[last] = value


def _break(draw: st.DrawFn, doc: dict[str, Any], path: str) -> None:
    """Remove the value at ``path`` or set it to an odd or near-miss one, in place."""
    section = draw(_SECTION_NAMES)
    path = path.format(section=section)
    # Results count only on a Complete event: make it one, most of the time.
    if (
        path.startswith("results.")
        and doc.get("status") not in COMPLETE_NAMES
        and draw(st.integers(min_value=0, max_value=3))
    ):
        doc["status"] = draw(st.sampled_from(COMPLETE_NAMES))
        doc["results"] = draw(results_dicts())
    # Break one field of a section that is otherwise whole, most of the time.
    results = doc.get("results")
    if (
        path.startswith(f"results.sections.{section}.")
        and section in SECTION_NAMES
        and isinstance(results, dict)
        and draw(st.integers(min_value=0, max_value=3))
    ):
        if not isinstance(results.get("sections"), dict):
            results["sections"] = {}
        results["sections"][section] = draw(section_dicts(section))
    near = _NEAR_VALUES.get(path.rsplit(".", 1)[-1], odd_values())
    kind = draw(st.sampled_from(("near", "near", "near", "odd", "delete")))
    value = DELETE if kind == "delete" else draw(near if kind == "near" else odd_values())
    set_path(doc, path, value)


@st.composite
def broken_event_dicts(draw: st.DrawFn, path: str | None = None) -> dict[str, Any]:
    """A valid event broken at ``path`` (a path of ``PATHS``; any when None), and now and
    then at one or two other places too.

    Most such events break a rule; some stay valid (an unknown field added, an ignored
    ``results`` changed, a value replaced by another good one): the test decides which is
    which, not this strategy.
    """
    doc = draw(event_dicts())
    _break(draw, doc, path or draw(st.sampled_from(PATHS)))
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2)))):
        _break(draw, doc, draw(st.sampled_from(PATHS)))
    return doc


def event_documents() -> st.SearchStrategy[Any]:
    """Anything that may be published as an event: valid, broken, or not an object at all."""
    return st.one_of(event_dicts(), broken_event_dicts(), broken_event_dicts(), odd_values())


# --------------------------------------------------------------------------------------------
# Outcome records, built as the service's callers build them


@st.composite
def trigger_events(draw: st.DrawFn) -> ExamEvent:
    """A valid event that is a webhook trigger."""
    doc = draw(event_dicts())
    if doc["event_type"] != "reset":
        doc["status"] = draw(st.sampled_from(("Finished", "Complete", "Invalidated", "Problem")))
        doc["previous_status"] = None
        if doc["status"] == "Complete":
            doc["results"] = draw(results_dicts())
    event = parse_event(encode_event(doc))
    assert candidate_trigger(event) is not None
    return event


_REASONS: Final = st.sampled_from(
    (
        "no_tracking_code",
        "unknown_tracking_code",
        "inactive_tracking_code",
        "timeout",
        "connection_error",
        "redirect",
        "retries_exhausted",
        "endpoint_blocked",
        "circuit_open",
        "tracking_code_paused",
        "internal_error",
    )
)
_HOSTS: Final = st.sampled_from(("hooks.example.edu", "127.0.0.1", "::1", "xn--bcher-kva.ch"))
_NOW: Final = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - the zone is added by ``timezones``
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def _results(statuses: st.SearchStrategy[int | None]) -> st.SearchStrategy[AttemptResult]:
    return st.builds(
        AttemptResult,
        status=statuses,
        latency_ms=st.floats(min_value=0, max_value=120_000),
        error=st.sampled_from((None, "timeout", "connection_error", "endpoint_blocked")),
    )


@st.composite
def outcome_records(draw: st.DrawFn) -> OutcomeRecord:
    """An outcome as ``EventHandler`` and ``Deliverer`` publish one for a valid event."""
    event = draw(trigger_events())
    trigger = candidate_trigger(event)
    assert trigger is not None
    now = draw(_NOW)
    host = draw(_HOSTS)
    kind = draw(st.sampled_from(("delivered", "failed", "retry", "held", "skipped", "crash")))
    attempt = draw(st.integers(min_value=0, max_value=8))
    if kind == "delivered":
        result = draw(_results(st.integers(min_value=200, max_value=299)))
        return event_outcome(
            event,
            trigger.value,
            Outcome.DELIVERED,
            now,
            attempt=attempt + 1,
            result=result,
            endpoint_host=host,
        )
    if kind in ("failed", "retry"):
        result = draw(_results(st.one_of(st.none(), st.integers(min_value=300, max_value=599))))
        reason = draw(st.sampled_from((failure_reason(result) or "", "retries_exhausted")))
        later = now + timedelta(seconds=draw(st.floats(min_value=0, max_value=36_000)))
        return event_outcome(
            event,
            trigger.value,
            Outcome.FAILED if kind == "failed" else Outcome.RETRY_SCHEDULED,
            now,
            reason=reason,
            attempt=attempt + 1,
            result=result,
            endpoint_host=host,
            next_attempt_at=later if kind == "retry" else None,
        )
    if kind == "held":
        return event_outcome(
            event,
            trigger.value,
            Outcome.RETRY_SCHEDULED,
            now,
            reason=draw(st.sampled_from(("circuit_open", "endpoint_busy", "tracking_code_paused"))),
            attempt=attempt,
            endpoint_host=host,
            next_attempt_at=now,
        )
    outcome = Outcome.SKIPPED if kind == "skipped" else Outcome.FAILED
    reason = draw(_REASONS) if kind == "skipped" else "internal_error"
    return event_outcome(event, trigger.value, outcome, now, reason=reason, attempt=attempt)


__all__ = [
    "DELETE",
    "PATHS",
    "RESULT_PATHS",
    "SCHEMAS_DIR",
    "SCHEMA_FILES",
    "TOP_FIELDS",
    "broken_event_dicts",
    "event_documents",
    "load_schema",
    "near_dates",
    "near_timestamps",
    "odd_values",
    "outcome_records",
    "set_path",
    "trigger_events",
    "validator",
]
