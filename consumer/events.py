"""Exam-state events: bytes in, a typed ``ExamEvent`` out, or ``InvalidEvent`` naming the rule.

Pure: no I/O. The rules are those of CONTRACT section 2; legacy status names are normalised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Final, TypeGuard, TypeVar, cast

import orjson

from consumer.errors import InvalidEvent
from consumer.records import record

SCHEMA_VERSION: Final = 1


class Status(StrEnum):
    READY = "Ready"
    INCOMPLETE = "Incomplete"
    FINISHED = "Finished"
    REVIEW = "Review"
    PROBLEM = "Problem"
    INVALIDATED = "Invalidated"
    COMPLETE = "Complete"
    DISABLED = "Disabled"


LEGACY_STATUSES: Final[Mapping[str, Status]] = {
    "Started": Status.INCOMPLETE,
    "Technical Difficulty": Status.PROBLEM,
    "Completed": Status.COMPLETE,
}


class EventType(StrEnum):
    STATUS_CHANGED = "status_changed"
    RESET = "reset"


_E = TypeVar("_E", bound=StrEnum)

SECTION_NAMES: Final = ("grammar", "listening", "reading", "writing", "speaking")

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@record
class SectionResult:
    level: float
    score: float
    percent: float
    cefr: str
    question_count: int | None = None


@record
class Results:
    score_report_url: str
    overall_level: float
    overall_cefr: str
    sections: Mapping[str, SectionResult] = field(default_factory=dict)


@record
class ExamEvent:
    event_id: str
    event_type: EventType
    occurred_at: datetime
    occurred_at_text: str
    test_id: str
    oid: str
    tracking_code: str | None
    status: Status
    previous_status: Status | None
    reset_type: str | None
    duration_minutes: int
    finished_on: date | None
    results: Results | None

    @property
    def status_changed(self) -> bool:
        """True when ``status`` differs from ``previous_status`` (a missing one counts)."""
        return self.previous_status is None or self.status != self.previous_status


def parse_event(value: bytes | None, key: bytes | None = None) -> ExamEvent:
    """Parse and validate one record of ``exam-events``.

    Raises ``InvalidEvent`` naming the first field that breaks a rule.
    """
    if value is None:
        raise InvalidEvent("value", "is empty (a tombstone), expected a JSON object")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("value", f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("value", f"must be a JSON object, got {_json_type(doc)}")
    try:
        event = _parse_doc(doc)
    except InvalidEvent as exc:
        exc.known.update(_readable(doc))
        raise
    if key is not None and key != event.test_id.encode():
        raise InvalidEvent("key", "must equal test_id (UTF-8)", _readable(doc))
    return event


def _readable(doc: Mapping[str, Any]) -> dict[str, str]:
    """The identifying fields that can be read even from an invalid event."""
    out: dict[str, str] = {}
    for name in ("event_id", "test_id", "oid", "tracking_code", "occurred_at"):
        value = doc.get(name)
        if isinstance(value, str) and value:
            out[name] = value
    return out


def _parse_doc(doc: Mapping[str, Any]) -> ExamEvent:
    version = doc.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise InvalidEvent("schema_version", f"must be {SCHEMA_VERSION}, got {version!r}")
    event_id = _required_str(doc, "event_id")
    if not event_id.isprintable() or not event_id.isascii():
        # It travels as the webhook-id header: printable ASCII only.
        raise InvalidEvent("event_id", "must be printable ASCII (it is the webhook-id header)")
    event_type = _enum(doc, "event_type", EventType)
    occurred_text = _required_str(doc, "occurred_at")
    occurred_at = _rfc3339(occurred_text)
    test_id = _required_str(doc, "test_id")
    oid = doc.get("oid", "")
    if not isinstance(oid, str):
        raise InvalidEvent("oid", f"must be a string, got {_json_type(oid)}")
    tracking_code = doc.get("tracking_code")
    if tracking_code is not None and not isinstance(tracking_code, str):
        raise InvalidEvent(
            "tracking_code", f"must be a string or null, got {_json_type(tracking_code)}"
        )
    status = _status(doc, "status", required=True)
    assert status is not None
    previous_status = _status(doc, "previous_status", required=False)
    reset_type = doc.get("reset_type")
    if event_type is EventType.RESET:
        if not isinstance(reset_type, str) or not reset_type:
            raise InvalidEvent("reset_type", "must be a non-empty string when event_type is reset")
    elif reset_type is not None:
        raise InvalidEvent("reset_type", "must be null or absent unless event_type is reset")
    duration = doc.get("duration_minutes")
    if not _is_int(duration) or duration < 0:
        raise InvalidEvent("duration_minutes", f"must be an integer >= 0, got {duration!r}")
    finished_on = _finished_on(doc.get("finished_on"))
    if finished_on is None and occurred_at.year <= 1900:
        raise InvalidEvent("occurred_at", "year must be greater than 1900 when finished_on is null")
    results = None
    if status is Status.COMPLETE:
        raw = doc.get("results")
        if not isinstance(raw, dict):
            raise InvalidEvent("results", "must be an object when status is Complete")
        results = _results(raw)
    return ExamEvent(
        event_id=event_id,
        event_type=event_type,
        occurred_at=occurred_at,
        occurred_at_text=occurred_text,
        test_id=test_id,
        oid=oid,
        tracking_code=tracking_code,
        status=status,
        previous_status=previous_status,
        reset_type=reset_type if event_type is EventType.RESET else None,
        duration_minutes=duration,
        finished_on=finished_on,
        results=results,
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _required_str(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(name, f"is required and must be a non-empty string, got {value!r}")
    return value


def _enum(doc: Mapping[str, Any], name: str, kind: type[_E]) -> _E:
    value = doc.get(name)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    allowed = ", ".join(member.value for member in kind)
    raise InvalidEvent(name, f"must be one of {allowed}; got {value!r}")


# Every accepted spelling, current and legacy: one dict lookup instead of an Enum call.
_STATUSES: Final[Mapping[str, Status]] = {s.value: s for s in Status} | dict(LEGACY_STATUSES)


def _status(doc: Mapping[str, Any], name: str, *, required: bool) -> Status | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if isinstance(value, str):
        status = _STATUSES.get(value)
        if status is not None:
            return status
    allowed = ", ".join(s.value for s in Status)
    nullable = " or null" if not required else ""
    raise InvalidEvent(name, f"must be one of {allowed}{nullable}; got {value!r}")


def _rfc3339(text: str) -> datetime:
    if not _RFC3339.fullmatch(text):
        raise InvalidEvent("occurred_at", f"must be an RFC 3339 timestamp, got {text!r}")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise InvalidEvent("occurred_at", f"is not a real date and time: {text!r}") from None
    except OverflowError:
        # A real offset time whose UTC instant falls outside years 1 to 9999.
        raise InvalidEvent("occurred_at", f"is out of range in UTC: {text!r}") from None
    return moment


def _finished_on(value: object) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise InvalidEvent("finished_on", f"must be YYYY-MM-DD or null, got {value!r}")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidEvent("finished_on", f"is not a real date: {value!r}") from None
    if day.year <= 1900:
        raise InvalidEvent("finished_on", f"year must be greater than 1900, got {day.year}")
    return day


def _number(value: object, path: str, low: float, high: float | None, field: str = "") -> float:
    """``value`` checked; ``path + field`` names it in the error (joined only then)."""
    kind = type(value)  # exact types, the fast check: a bool is not a number here
    number = cast(float, value)
    if not (kind is int or (kind is float and math.isfinite(number))):
        raise InvalidEvent(path + field, f"must be a number, got {value!r}")
    if number < low or (high is not None and number > high):
        bounds = f"{low} to {high}" if high is not None else f">= {low}"
        raise InvalidEvent(path + field, f"must be {bounds}, got {value!r}")
    return number


def _cefr(value: object, path: str, field: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(path + field, f"must be a non-empty string, got {value!r}")
    return value


_SECTION_PATHS: Final = {name: f"results.sections.{name}" for name in SECTION_NAMES}
_INF: Final = math.inf


def _results(raw: Mapping[str, Any]) -> Results:
    url = raw.get("score_report_url")
    if not isinstance(url, str):
        raise InvalidEvent("results.score_report_url", f"must be a string, got {url!r}")
    overall = raw.get("overall")
    if not isinstance(overall, dict):
        raise InvalidEvent("results.overall", "must be an object with level and cefr")
    level = _number(overall.get("level"), "results.overall.level", 0.0, 6.0)
    cefr = _cefr(overall.get("cefr"), "results.overall.cefr")
    raw_sections = raw.get("sections", {})
    if raw_sections is None:
        raw_sections = {}
    if not isinstance(raw_sections, dict):
        raise InvalidEvent("results.sections", "must be an object")
    sections: dict[str, SectionResult] = {}
    for name, section in raw_sections.items():
        path = _SECTION_PATHS.get(name)
        if path is None:
            raise InvalidEvent(
                f"results.sections.{name}",
                f"is not a section; sections are {', '.join(SECTION_NAMES)}",
            )
        if not isinstance(section, dict):
            raise InvalidEvent(path, "must be an object")
        question_count = None
        if name == "writing":
            question_count = section.get("question_count")
            if not _is_int(question_count) or question_count < 0:
                raise InvalidEvent(
                    f"{path}.question_count", f"must be an integer >= 0, got {question_count!r}"
                )
        s_level, s_score = section.get("level"), section.get("score")
        s_percent, s_cefr = section.get("percent"), section.get("cefr")
        # The common case checked inline (exact int or float, in range; NaN and infinity
        # fail the comparisons); anything else goes through the checks that name the rule.
        if not ((type(s_level) is float or type(s_level) is int) and 0.0 <= s_level <= 6.0):
            s_level = _number(s_level, path, 0.0, 6.0, ".level")
        if not ((type(s_score) is float or type(s_score) is int) and 0.0 <= s_score < _INF):
            s_score = _number(s_score, path, 0.0, None, ".score")
        if not ((type(s_percent) is float or type(s_percent) is int) and 0.0 <= s_percent <= 100.0):
            s_percent = _number(s_percent, path, 0.0, 100.0, ".percent")
        if type(s_cefr) is not str or not s_cefr:
            s_cefr = _cefr(s_cefr, path, ".cefr")
        sections[name] = SectionResult(s_level, s_score, s_percent, s_cefr, question_count)
    return Results(score_report_url=url, overall_level=level, overall_cefr=cefr, sections=sections)
