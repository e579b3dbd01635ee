"""Hypothesis strategies for valid ``exam-events`` records (CONTRACT section 2).

``event_dicts()`` draws JSON-ready dicts that ``consumer.events.parse_event`` must accept: every
field, optional and nullable ones left out or null, every status including the legacy names,
resets, results with any subset of sections, and unicode text (with ``+&%=`` and non-ASCII)
wherever the contract allows free text. ``encode_event`` turns one into record bytes.
"""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta
from typing import Any, Final

import orjson
from hypothesis import strategies as st

from consumer.events import LEGACY_STATUSES, SECTION_NAMES, Status
from tests.factories import EXAMPLE

STATUS_NAMES: Final[tuple[str, ...]] = tuple(s.value for s in Status)
LEGACY_STATUS_NAMES: Final[tuple[str, ...]] = tuple(LEGACY_STATUSES)
ALL_STATUS_NAMES: Final[tuple[str, ...]] = STATUS_NAMES + LEGACY_STATUS_NAMES
COMPLETE_NAMES: Final[tuple[str, ...]] = ("Complete", "Completed")

# Characters that break naive form encoding or PHP parsing, drawn often on purpose.
_AWKWARD: Final = "+&%=?#;/ \"'\\\n\t"

_characters = st.one_of(
    st.sampled_from(_AWKWARD),
    st.sampled_from("éüñß中文Ωя😀"),
    st.characters(codec="utf-8"),
)


def texts(*, min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    """Unicode text, often with ``+&%=`` and non-ASCII characters."""
    return st.text(_characters, min_size=min_size, max_size=max_size)


def printable_ascii(min_size: int = 0) -> st.SearchStrategy[str]:
    """Text that may travel in an HTTP header: printable ASCII."""
    return st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=min_size)


def status_names(*, include_legacy: bool = True) -> st.SearchStrategy[str]:
    return st.sampled_from(ALL_STATUS_NAMES if include_legacy else STATUS_NAMES)


# Wall-clock bounds of drawn timestamps (naive: the offset is drawn on its own), kept a day
# inside years 1901..9998 so that every offset still lands on a representable UTC instant.
_WALL_CLOCK_MIN: Final = datetime(1902, 1, 2)  # noqa: DTZ001
_WALL_CLOCK_MAX: Final = datetime(9998, 12, 30)  # noqa: DTZ001


@st.composite
def rfc3339_timestamps(draw: st.DrawFn) -> str:
    """An RFC 3339 timestamp: ``T``/``t``/space, optional fraction, ``Z``/``z`` or an offset."""
    moment = draw(st.datetimes(min_value=_WALL_CLOCK_MIN, max_value=_WALL_CLOCK_MAX))
    separator = draw(st.sampled_from("TTt "))
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = ""
    if digits:
        fraction = "." + f"{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    if draw(st.booleans()):
        zone = draw(st.sampled_from("Zz"))
    else:
        minutes = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
        sign = "-" if minutes < 0 else "+"
        hours, mins = divmod(abs(minutes), 60)
        zone = f"{sign}{hours:02d}:{mins:02d}"
    return f"{moment:%Y-%m-%d}{separator}{moment:%H:%M:%S}{fraction}{zone}"


def finished_on_dates() -> st.SearchStrategy[str]:
    """``YYYY-MM-DD`` with a year above 1900."""
    return st.dates(min_value=date(1901, 1, 1)).map(date.isoformat)


def _bounded(low: float, high: float) -> st.SearchStrategy[float | int]:
    return st.one_of(
        st.integers(min_value=int(low), max_value=int(high)),
        st.floats(min_value=low, max_value=high, allow_nan=False),
    )


def _score() -> st.SearchStrategy[float | int]:
    return st.one_of(
        st.integers(min_value=0, max_value=10**9),
        st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    )


@st.composite
def section_dicts(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """One valid section of ``results.sections``; ``writing`` carries ``question_count``."""
    section: dict[str, Any] = {
        "level": draw(_bounded(0.0, 6.0)),
        "score": draw(_score()),
        "percent": draw(_bounded(0.0, 100.0)),
        "cefr": draw(texts(min_size=1, max_size=6)),
    }
    if name == "writing":
        section["question_count"] = draw(st.integers(min_value=0, max_value=10_000))
    return section


@st.composite
def results_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Valid ``results``: url, overall, and any subset of the five sections (or none at all)."""
    results: dict[str, Any] = {
        "score_report_url": draw(
            st.one_of(texts(), st.just("https://results.example.org/r/X?sig=a+b&x=1%20"))
        ),
        "overall": {"level": draw(_bounded(0.0, 6.0)), "cefr": draw(texts(min_size=1))},
    }
    names = draw(st.lists(st.sampled_from(SECTION_NAMES), unique=True))
    shape = draw(st.sampled_from(("object", "object", "absent", "null")))
    if shape == "object":
        results["sections"] = {name: draw(section_dicts(name)) for name in names}
    elif shape == "null":
        results["sections"] = None
    return results


# What a non-Complete event may carry as ``results``: it is ignored whatever it is.
_ignored_results = st.one_of(
    results_dicts(),
    st.none(),
    st.sampled_from(
        (
            "garbage",
            5,
            [],
            {},
            {"overall": "nonsense"},
            {"sections": {"essay": {"level": 99}}},
            {"score_report_url": 3, "overall": {"level": -1}},
        )
    ),
)


@st.composite
def event_dicts(
    draw: st.DrawFn,
    *,
    status: str | None = None,
    event_type: str | None = None,
) -> dict[str, Any]:
    """A valid ``exam-events`` value as a dict; ``status`` / ``event_type`` pin those fields."""
    status = status if status is not None else draw(status_names())
    event_type = (
        event_type
        if event_type is not None
        else draw(st.sampled_from(("status_changed", "status_changed", "reset")))
    )
    doc: dict[str, Any] = {
        "schema_version": 1,
        "event_id": draw(st.one_of(st.uuids().map(str), printable_ascii(min_size=1))),
        "event_type": event_type,
        "occurred_at": draw(rfc3339_timestamps()),
        "test_id": draw(
            st.one_of(st.from_regex(r"[0-9]{8}[A-Z]{2}", fullmatch=True), texts(min_size=1))
        ),
        "status": status,
        "duration_minutes": draw(st.integers(min_value=0, max_value=10**9)),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "oid": texts(),
        "tracking_code": st.one_of(st.none(), texts()),
        "previous_status": st.one_of(st.none(), status_names()),
        "finished_on": st.one_of(st.none(), finished_on_dates()),
    }
    for name, strategy in optional.items():
        if draw(st.integers(min_value=0, max_value=4)):
            doc[name] = draw(strategy)
    if event_type == "reset":
        doc["reset_type"] = draw(
            st.one_of(st.sampled_from(("full", "section", "retake")), texts(min_size=1))
        )
    elif draw(st.booleans()):
        doc["reset_type"] = None
    if status in COMPLETE_NAMES:
        doc["results"] = draw(results_dicts())
    elif draw(st.booleans()):
        doc["results"] = draw(_ignored_results)
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        # The contract may be extended: a field this consumer does not know is ignored.
        doc["x_future_field"] = draw(st.one_of(texts(), st.integers(-(2**53), 2**53), st.none()))
    return doc


def contract_example() -> dict[str, Any]:
    """A fresh copy of the example event of CONTRACT section 2."""
    return copy.deepcopy(EXAMPLE)


def encode_event(doc: dict[str, Any]) -> bytes:
    """The record value bytes of ``doc``."""
    return orjson.dumps(doc)


def utc_date_of(timestamp: str) -> date:
    """The UTC calendar date of an RFC 3339 ``timestamp`` drawn by ``rfc3339_timestamps``."""
    moment = datetime.fromisoformat(timestamp.upper().replace("Z", "+00:00"))
    offset = moment.utcoffset() or timedelta(0)
    return (moment.replace(tzinfo=None) - offset).date()


__all__ = [
    "ALL_STATUS_NAMES",
    "COMPLETE_NAMES",
    "LEGACY_STATUS_NAMES",
    "STATUS_NAMES",
    "contract_example",
    "encode_event",
    "event_dicts",
    "finished_on_dates",
    "results_dicts",
    "rfc3339_timestamps",
    "section_dicts",
    "status_names",
    "texts",
    "utc_date_of",
]
