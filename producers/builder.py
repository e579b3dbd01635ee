"""Exam events as upstream services publish them to ``exam-events`` (CONTRACT section 2).

Pure: no I/O. An ``ExamEventMessage`` holds every contract field; ``encode()`` serialises it
with orjson and validates the bytes with the consumer's own ``consumer.events.parse_event``, so
whatever leaves here is an event the consumer accepts, and an invalid one raises
``InvalidEvent`` naming the field before anything is sent.

``parse_json_lines`` does the same for a file of JSON objects, one per line, reporting each bad
line by its number.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

import orjson

from consumer.errors import InvalidEvent
from consumer.events import SCHEMA_VERSION, EventType, ExamEvent, Results, parse_event

__all__ = [
    "SCHEMA_VERSION",
    "EncodedEvent",
    "ExamEventMessage",
    "LineError",
    "ParsedLines",
    "encode_document",
    "format_timestamp",
    "new_event_id",
    "now_timestamp",
    "parse_json_lines",
    "results_document",
    "with_defaults",
]


def new_event_id() -> str:
    """A fresh event id: a random UUID (version 4) as a string."""
    return str(uuid.uuid4())


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``: ``2026-11-25T16:02:11Z``, with milliseconds when present.

    A naive datetime has no defined instant and raises ``InvalidEvent``.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidEvent("occurred_at", "must carry a time zone; got a naive datetime")
    utc = moment.astimezone(UTC)
    timespec = "seconds" if utc.microsecond == 0 else "milliseconds"
    return utc.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def now_timestamp() -> str:
    """The current time as ``format_timestamp`` writes it."""
    return format_timestamp(datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class ExamEventMessage:
    """One event for ``exam-events``, every contract field settable.

    ``status`` and ``previous_status`` take a ``consumer.events.Status`` or its spelling (legacy
    spellings included). ``event_id`` defaults to a new UUID4, ``occurred_at`` to now, and
    ``duration_minutes`` to 0 (an exam not yet taken has lasted no time). Nothing is checked
    until ``encode()``.
    """

    test_id: str
    status: str
    previous_status: str | None = None
    event_type: str = EventType.STATUS_CHANGED
    reset_type: str | None = None
    tracking_code: str | None = None
    oid: str = ""
    duration_minutes: int = 0
    finished_on: date | str | None = None
    results: Results | None = None
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime | str = field(default_factory=now_timestamp)
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        """The record key: the test id, UTF-8."""
        return self.test_id.encode()

    def to_document(self) -> dict[str, Any]:
        """The JSON object of the contract, fields in the contract's order."""
        occurred_at = self.occurred_at
        if isinstance(occurred_at, datetime):
            occurred_at = format_timestamp(occurred_at)
        finished_on = self.finished_on
        if isinstance(finished_on, date):
            finished_on = finished_on.isoformat()
        return {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "event_type": str(self.event_type),
            "occurred_at": occurred_at,
            "test_id": self.test_id,
            "oid": self.oid,
            "tracking_code": self.tracking_code,
            "status": str(self.status),
            "previous_status": (
                str(self.previous_status) if self.previous_status is not None else None
            ),
            "reset_type": self.reset_type,
            "duration_minutes": self.duration_minutes,
            "finished_on": finished_on,
            "results": results_document(self.results) if self.results is not None else None,
        }

    def encode(self) -> EncodedEvent:
        """Serialise and validate; raises ``InvalidEvent`` naming the first bad field."""
        return encode_document(self.to_document())


def results_document(results: Results) -> dict[str, Any]:
    """The ``results`` object of the contract from the consumer's ``Results`` value."""
    sections: dict[str, Any] = {}
    for name, section in results.sections.items():
        doc: dict[str, Any] = {
            "level": section.level,
            "score": section.score,
            "percent": section.percent,
            "cefr": section.cefr,
        }
        if section.question_count is not None:
            doc["question_count"] = section.question_count
        sections[name] = doc
    return {
        "score_report_url": results.score_report_url,
        "overall": {"level": results.overall_level, "cefr": results.overall_cefr},
        "sections": sections,
    }


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A validated record: key and value bytes, and the event as the consumer reads it."""

    key: bytes
    value: bytes
    event: ExamEvent


def encode_document(doc: Mapping[str, Any]) -> EncodedEvent:
    """Serialise one event object and validate it exactly as the consumer will.

    The key is the document's ``test_id`` in UTF-8. Raises ``InvalidEvent``.
    """
    try:
        value = orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:
        raise InvalidEvent("value", f"cannot be written as JSON ({exc})") from None
    test_id = doc.get("test_id")
    key = test_id.encode() if isinstance(test_id, str) else None
    event = parse_event(value, key)
    return EncodedEvent(key=event.test_id.encode(), value=value, event=event)


# The fields ``with_defaults`` fills in when absent, and how.
_DEFAULTS: Final[Mapping[str, Callable[[], object]]] = {
    "schema_version": lambda: SCHEMA_VERSION,
    "event_id": new_event_id,
    "event_type": lambda: EventType.STATUS_CHANGED.value,
    "occurred_at": now_timestamp,
}


def with_defaults(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document with the builder's defaults for the fields it lacks.

    Only ``schema_version`` (1), ``event_id`` (a new UUID4), ``event_type``
    (``status_changed``) and ``occurred_at`` (now) are filled in; a field present with any
    value, null included, is kept as it is.
    """
    out = dict(doc)
    for name, default in _DEFAULTS.items():
        if name not in out:
            out[name] = default()
    return out


@dataclass(frozen=True, slots=True)
class LineError:
    """A line of a JSON-lines input that is not a valid event (``line`` counts from 1)."""

    line: int
    error: InvalidEvent

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


@dataclass(frozen=True, slots=True)
class ParsedLines:
    events: tuple[EncodedEvent, ...]
    errors: tuple[LineError, ...]


def parse_json_lines(lines: Iterable[bytes]) -> ParsedLines:
    """Validate one event object per line; blank lines are skipped but still counted.

    Each object gets ``with_defaults`` before it is validated. Every bad line is reported,
    not only the first.
    """
    events: list[EncodedEvent] = []
    errors: list[LineError] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(_encode_line(line))
        except InvalidEvent as exc:
            errors.append(LineError(number, exc))
    return ParsedLines(events=tuple(events), errors=tuple(errors))


def _encode_line(line: bytes) -> EncodedEvent:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("value", f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("value", "must be a JSON object")
    return encode_document(with_defaults(doc))
