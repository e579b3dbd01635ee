"""``parse_event``: CONTRACT sections 1 and 2, the input record and its rules."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import InvalidEvent
from consumer.events import (
    SECTION_NAMES,
    EventType,
    ExamEvent,
    Results,
    SectionResult,
    Status,
    parse_event,
)
from tests.strategies import (
    COMPLETE_NAMES,
    contract_example,
    encode_event,
    event_dicts,
    results_dicts,
    section_dicts,
    utc_date_of,
)

MISSING: Final = object()
"""A breaking "value" that removes the key instead of setting it."""

LEGACY: Final = {"Started": Status.INCOMPLETE, "Technical Difficulty": Status.PROBLEM}
LEGACY_ALL: Final = {**LEGACY, "Completed": Status.COMPLETE}


def parse(doc: Mapping[str, Any], key: bytes | None = None) -> ExamEvent:
    return parse_event(encode_event(dict(doc)), key)


def rejection(doc: Mapping[str, Any], key: bytes | None = None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(doc, key)
    return info.value


def set_path(doc: dict[str, Any], path: str, value: object) -> None:
    """Set (or with ``MISSING`` remove) the value at a dotted path; parents must exist."""
    *parents, last = path.split(".")
    target = doc
    for name in parents:
        target = target[name]
    if value is MISSING:
        target.pop(last, None)
    else:
        target[last] = value


# --------------------------------------------------------------------------------------------
# The contract's example


def test_contract_example_parses_to_the_expected_event() -> None:
    """The example event of CONTRACT section 2 parses field for field."""
    assert parse(contract_example(), b"50613490BP") == ExamEvent(
        event_id="0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f",
        event_type=EventType.STATUS_CHANGED,
        occurred_at=datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC),
        occurred_at_text="2026-11-25T16:02:11Z",
        test_id="50613490BP",
        oid="crm-000042",
        tracking_code="ACME-UNI",
        status=Status.COMPLETE,
        previous_status=Status.REVIEW,
        reset_type=None,
        duration_minutes=87,
        finished_on=date(2026, 11, 24),
        results=Results(
            score_report_url="https://results.example.org/r/50613490BP?sig=a+b&x=1",
            overall_level=4.3,
            overall_cefr="B2",
            sections={
                "grammar": SectionResult(level=4.0, score=41, percent=67, cefr="B1"),
                "listening": SectionResult(level=3.5, score=62, percent=62, cefr="B1"),
                "reading": SectionResult(level=4.0, score=70, percent=70, cefr="B2"),
                "writing": SectionResult(
                    level=3.0, score=62, percent=62, cefr="B1", question_count=2
                ),
                "speaking": SectionResult(level=3.0, score=62, percent=62, cefr="C1+"),
            },
        ),
    )


def test_numbers_keep_their_json_type() -> None:
    """An integer percent stays an int and a ``4.0`` level stays a float."""
    results = parse(contract_example()).results
    assert results is not None
    grammar = results.sections["grammar"]
    assert type(grammar.percent) is int
    assert type(grammar.level) is float


# --------------------------------------------------------------------------------------------
# Valid variations


@pytest.mark.parametrize(("legacy", "normalised"), LEGACY_ALL.items())
def test_legacy_status_is_normalised(legacy: str, normalised: Status) -> None:
    """``Started``, ``Technical Difficulty`` and ``Completed`` become today's names."""
    assert parse({**contract_example(), "status": legacy}).status is normalised


@pytest.mark.parametrize(("legacy", "normalised"), LEGACY_ALL.items())
def test_legacy_previous_status_is_normalised(legacy: str, normalised: Status) -> None:
    """Legacy names are normalised in ``previous_status`` too."""
    assert parse({**contract_example(), "previous_status": legacy}).previous_status is normalised


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_every_contract_status_is_accepted(status: str) -> None:
    """Each of the eight states of section 1 parses to itself."""
    assert parse({**contract_example(), "status": status}).status == status


@pytest.mark.parametrize("previous", [None, MISSING])
def test_previous_status_may_be_null_or_absent(previous: object) -> None:
    """A null or missing ``previous_status`` parses to None."""
    doc = contract_example()
    set_path(doc, "previous_status", previous)
    assert parse(doc).previous_status is None


def test_oid_may_be_empty() -> None:
    """``oid`` is a string that may be empty."""
    assert parse({**contract_example(), "oid": ""}).oid == ""


def test_tracking_code_may_be_null() -> None:
    """A null ``tracking_code`` parses to None."""
    assert parse({**contract_example(), "tracking_code": None}).tracking_code is None


@pytest.mark.parametrize("reset_type", [None, MISSING])
def test_reset_type_may_be_null_or_absent_unless_reset(reset_type: object) -> None:
    """A ``status_changed`` event may leave ``reset_type`` null or out."""
    doc = contract_example()
    set_path(doc, "reset_type", reset_type)
    assert parse(doc).reset_type is None


@pytest.mark.parametrize("status", ["Ready", "Complete", "Invalidated", "Started"])
def test_reset_carries_its_reset_type_whatever_the_status(status: str) -> None:
    """A ``reset`` event with a reset type parses with any status."""
    event = parse(
        {**contract_example(), "event_type": "reset", "reset_type": "full", "status": status}
    )
    assert (event.event_type, event.reset_type) == (EventType.RESET, "full")


def test_finished_on_may_be_null() -> None:
    assert parse({**contract_example(), "finished_on": None}).finished_on is None


def test_finished_on_accepts_first_year_after_1900() -> None:
    """The earliest accepted ``finished_on`` is 1901-01-01."""
    assert parse({**contract_example(), "finished_on": "1901-01-01"}).finished_on == date(
        1901, 1, 1
    )


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-11-25T16:02:11Z", datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC)),
        ("2026-11-25t16:02:11z", datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC)),
        ("2026-11-25 16:02:11Z", datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC)),
        ("2026-11-25T16:02:11.087Z", datetime(2026, 11, 25, 16, 2, 11, 87000, tzinfo=UTC)),
        ("2026-01-01T01:00:00+05:00", datetime(2025, 12, 31, 20, 0, 0, tzinfo=UTC)),
        ("2026-11-25T16:02:11-03:30", datetime(2026, 11, 25, 19, 32, 11, tzinfo=UTC)),
    ],
)
def test_occurred_at_accepts_rfc3339_and_is_held_in_utc(text: str, utc: datetime) -> None:
    """RFC 3339 forms parse; the instant is converted to UTC and the text kept verbatim."""
    event = parse({**contract_example(), "occurred_at": text})
    assert event.occurred_at == utc
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at_text == text


@pytest.mark.parametrize(
    "garbage", [None, "garbage", 5, [], {}, {"overall": "x"}, {"sections": {"essay": 1}}]
)
def test_results_are_ignored_when_not_complete(garbage: object) -> None:
    """A ``Finished`` event with garbage ``results`` is valid and carries no results."""
    event = parse({**contract_example(), "status": "Finished", "results": garbage})
    assert event.results is None


def test_results_without_sections_is_valid() -> None:
    """``results.sections`` may be absent, null or empty: any subset of the five sections."""
    for sections in (MISSING, None, {}):
        doc = contract_example()
        set_path(doc, "results.sections", sections)
        results = parse(doc).results
        assert results is not None
        assert results.sections == {}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("results.overall.level", 0),
        ("results.overall.level", 6.0),
        ("results.sections.grammar.level", 0.0),
        ("results.sections.grammar.level", 6),
        ("results.sections.grammar.percent", 0),
        ("results.sections.grammar.percent", 100),
        ("results.sections.grammar.score", 0),
        ("results.sections.grammar.score", 12345.5),
        ("results.sections.writing.question_count", 0),
    ],
)
def test_numbers_on_the_bounds_are_accepted(path: str, value: float) -> None:
    """The ranges of section 2 are inclusive."""
    doc = contract_example()
    set_path(doc, path, value)
    assert parse(doc).event_id == doc["event_id"]


def test_unknown_fields_are_ignored() -> None:
    """The contract may be extended: a field this consumer does not know is no error."""
    assert parse({**contract_example(), "proctor": {"name": "x"}}).test_id == "50613490BP"


def test_matching_key_is_accepted() -> None:
    """The record key is the test id in UTF-8."""
    doc = {**contract_example(), "test_id": "Prüfung+1"}
    assert parse(doc, "Prüfung+1".encode()).test_id == "Prüfung+1"


# --------------------------------------------------------------------------------------------
# Breaking one rule names the field

# (dotted path, breaking value, fields set first so that the rule applies)
BREACHES: Final[list[tuple[str, object, Mapping[str, object]]]] = [
    ("schema_version", 2, {}),
    ("schema_version", "1", {}),
    ("schema_version", 1.0, {}),
    ("schema_version", True, {}),
    ("schema_version", None, {}),
    ("schema_version", MISSING, {}),
    ("event_id", "", {}),
    ("event_id", 5, {}),
    ("event_id", None, {}),
    ("event_id", MISSING, {}),
    ("event_id", "line\nbreak", {}),
    ("event_id", "caf\u00e9", {}),
    ("event_type", "statusChanged", {}),
    ("event_type", "RESET", {}),
    ("event_type", None, {}),
    ("event_type", MISSING, {}),
    ("occurred_at", "2026-11-25", {}),
    ("occurred_at", "2026-11-25T16:02:11", {}),
    ("occurred_at", "2026-11-25T16:02Z", {}),
    ("occurred_at", "2026-11-25T16:02:11+0100", {}),
    ("occurred_at", "2026-11-25T16:02:11 UTC", {}),
    ("occurred_at", "25/11/2026 16:02:11Z", {}),
    ("occurred_at", "2026-13-01T00:00:00Z", {}),
    ("occurred_at", "2026-02-30T00:00:00Z", {}),
    ("occurred_at", "2026-11-25T16:02:11+24:00", {}),
    ("occurred_at", "2026-11-25T16:02:11+05:60", {}),
    ("occurred_at", "2026-11-25T16:02:11Z\n", {}),
    ("occurred_at", "٢٠٢٦-11-25T16:02:11Z", {}),
    ("occurred_at", "0001-01-01T00:00:00+01:00", {}),
    ("occurred_at", "9999-12-31T23:59:59-01:00", {}),
    ("occurred_at", "", {}),
    ("occurred_at", 1764086531, {}),
    ("occurred_at", None, {}),
    ("occurred_at", MISSING, {}),
    ("test_id", "", {}),
    ("test_id", 50613490, {}),
    ("test_id", None, {}),
    ("test_id", MISSING, {}),
    ("oid", 42, {}),
    ("oid", None, {}),
    ("oid", ["crm"], {}),
    ("tracking_code", 7, {}),
    ("tracking_code", True, {}),
    ("tracking_code", {"code": "ACME"}, {}),
    ("status", "Done", {}),
    ("status", "complete", {}),
    ("status", "", {}),
    ("status", 3, {}),
    ("status", None, {}),
    ("status", MISSING, {}),
    ("previous_status", "Done", {}),
    ("previous_status", "", {}),
    ("previous_status", 3, {}),
    ("reset_type", MISSING, {"event_type": "reset"}),
    ("reset_type", None, {"event_type": "reset"}),
    ("reset_type", "", {"event_type": "reset"}),
    ("reset_type", 5, {"event_type": "reset"}),
    ("reset_type", "full", {"event_type": "status_changed"}),
    ("reset_type", "", {"event_type": "status_changed"}),
    ("duration_minutes", -1, {}),
    ("duration_minutes", 1.5, {}),
    ("duration_minutes", 87.0, {}),
    ("duration_minutes", True, {}),
    ("duration_minutes", "87", {}),
    ("duration_minutes", None, {}),
    ("duration_minutes", MISSING, {}),
    ("finished_on", "2026/11/24", {}),
    ("finished_on", "24-11-2026", {}),
    ("finished_on", "2026-11-24T00:00:00Z", {}),
    ("finished_on", "2026-02-30", {}),
    ("finished_on", "2026-11-24\n", {}),
    ("finished_on", "1900-12-31", {}),
    ("finished_on", "0001-01-01", {}),
    ("finished_on", 20261124, {}),
    ("results", MISSING, {"status": "Complete"}),
    ("results", None, {"status": "Complete"}),
    ("results", [], {"status": "Completed"}),
    ("results", "B2", {"status": "Complete"}),
    ("results.score_report_url", None, {"status": "Complete"}),
    ("results.score_report_url", 5, {"status": "Complete"}),
    ("results.overall", MISSING, {"status": "Complete"}),
    ("results.overall", "B2", {"status": "Complete"}),
    ("results.overall.level", -0.1, {"status": "Complete"}),
    ("results.overall.level", 6.01, {"status": "Complete"}),
    ("results.overall.level", "4.3", {"status": "Complete"}),
    ("results.overall.level", True, {"status": "Complete"}),
    ("results.overall.level", MISSING, {"status": "Complete"}),
    ("results.overall.cefr", "", {"status": "Complete"}),
    ("results.overall.cefr", None, {"status": "Complete"}),
    ("results.overall.cefr", 4, {"status": "Complete"}),
    ("results.sections", [], {"status": "Complete"}),
    ("results.sections", "all", {"status": "Complete"}),
    ("results.sections.essay", {"level": 1, "score": 1, "percent": 1, "cefr": "A1"}, {}),
    ("results.sections.Grammar", {"level": 1, "score": 1, "percent": 1, "cefr": "A1"}, {}),
    ("results.sections.{section}", "B2", {"status": "Complete"}),
    ("results.sections.{section}", None, {"status": "Complete"}),
    ("results.sections.{section}.level", -0.5, {"status": "Complete"}),
    ("results.sections.{section}.level", 6.5, {"status": "Complete"}),
    ("results.sections.{section}.level", "3", {"status": "Complete"}),
    ("results.sections.{section}.level", False, {"status": "Complete"}),
    ("results.sections.{section}.level", MISSING, {"status": "Complete"}),
    ("results.sections.{section}.percent", -1, {"status": "Complete"}),
    ("results.sections.{section}.percent", 100.5, {"status": "Complete"}),
    ("results.sections.{section}.percent", "50", {"status": "Complete"}),
    ("results.sections.{section}.percent", MISSING, {"status": "Complete"}),
    ("results.sections.{section}.score", -1, {"status": "Complete"}),
    ("results.sections.{section}.score", -0.1, {"status": "Complete"}),
    ("results.sections.{section}.score", "1", {"status": "Complete"}),
    ("results.sections.{section}.score", True, {"status": "Complete"}),
    ("results.sections.{section}.score", MISSING, {"status": "Complete"}),
    ("results.sections.{section}.cefr", "", {"status": "Complete"}),
    ("results.sections.{section}.cefr", None, {"status": "Complete"}),
    ("results.sections.{section}.cefr", 2, {"status": "Complete"}),
    ("results.sections.writing.question_count", -1, {"status": "Complete"}),
    ("results.sections.writing.question_count", 1.5, {"status": "Complete"}),
    ("results.sections.writing.question_count", 2.0, {"status": "Complete"}),
    ("results.sections.writing.question_count", True, {"status": "Complete"}),
    ("results.sections.writing.question_count", "2", {"status": "Complete"}),
    ("results.sections.writing.question_count", None, {"status": "Complete"}),
    ("results.sections.writing.question_count", MISSING, {"status": "Complete"}),
]


def _breach_id(breach: tuple[str, object, Mapping[str, object]]) -> str:
    path, value, setup = breach
    shown = "MISSING" if value is MISSING else repr(value)
    return f"{path}={shown}" + "".join(f",{k}={v}" for k, v in setup.items())


def break_rule(
    doc: dict[str, Any],
    breach: tuple[str, object, Mapping[str, object]],
    section: str,
    results: dict[str, Any] | None = None,
) -> str:
    """Apply one breach to a valid ``doc`` in place; return the field it must be blamed on.

    A breach inside ``results`` makes the event Complete with valid ``results`` (``results``
    when given) that hold the named section, so that only the breach itself is wrong.
    """
    template, value, setup = breach
    path = template.format(section=section)
    doc.update(setup)
    parts = path.split(".")
    if parts[0] == "results" and len(parts) > 1:
        doc["status"] = "Complete"
        if results is not None:
            doc["results"] = copy.deepcopy(results)
        if parts[1] == "sections" and len(parts) > 2:
            if not isinstance(doc["results"].get("sections"), dict):
                doc["results"]["sections"] = {}
            name = parts[2]
            if name in SECTION_NAMES and name not in doc["results"]["sections"]:
                doc["results"]["sections"][name] = copy.deepcopy(
                    contract_example()["results"]["sections"][name]
                )
    set_path(doc, path, value)
    return path


@pytest.mark.parametrize("breach", BREACHES, ids=_breach_id)
def test_breaking_a_rule_names_the_field(breach: tuple[str, object, Mapping[str, object]]) -> None:
    """Breaking one rule of section 2 raises ``InvalidEvent`` whose ``field`` names it."""
    doc = contract_example()
    field = break_rule(doc, breach, section="grammar")
    assert rejection(doc).field == field


@pytest.mark.parametrize("section", SECTION_NAMES)
def test_a_breach_in_any_section_names_that_section(section: str) -> None:
    """The dotted path names the section the bad value is in."""
    doc = contract_example()
    doc["results"]["sections"][section]["percent"] = 101
    assert rejection(doc).field == f"results.sections.{section}.percent"


def test_rejection_carries_what_could_be_read() -> None:
    """``InvalidEvent.known`` holds the readable ``event_id`` and ``test_id``."""
    error = rejection({**contract_example(), "duration_minutes": -5})
    assert error.known["event_id"] == "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f"
    assert error.known["test_id"] == "50613490BP"


def test_rejection_leaves_unreadable_ids_out_of_known() -> None:
    """An ``event_id`` that is not a non-empty string is not reported as known."""
    error = rejection({**contract_example(), "event_id": 17})
    assert "event_id" not in error.known
    assert error.known["test_id"] == "50613490BP"


def test_rejection_message_names_field_and_rule() -> None:
    """The readable reason starts with the field it blames."""
    error = rejection({**contract_example(), "status": "Done"})
    assert str(error).startswith("status: ")
    assert "Done" in error.rule


@pytest.mark.parametrize(
    "value",
    [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe", b"[1, 2]", b'"event"', b"42", b"null"],
)
def test_value_that_is_not_a_json_object_is_rejected(value: bytes) -> None:
    """Bytes that are not one JSON object are rejected on field ``value``."""
    with pytest.raises(InvalidEvent) as info:
        parse_event(value)
    assert info.value.field == "value"
    assert info.value.known == {}


def test_tombstone_is_rejected() -> None:
    """A record without a value (None) is rejected on field ``value``."""
    with pytest.raises(InvalidEvent) as info:
        parse_event(None, b"50613490BP")
    assert info.value.field == "value"


@pytest.mark.parametrize("key", [b"50613490BQ", b"", b"50613490bp", b"50613490BP "])
def test_key_other_than_test_id_is_rejected(key: bytes) -> None:
    """A record key that is not the test id is rejected on field ``key``, ids still known."""
    error = rejection(contract_example(), key)
    assert error.field == "key"
    assert error.known["event_id"] == "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f"


# --------------------------------------------------------------------------------------------
# Properties


def _expected_status(name: str) -> Status:
    return LEGACY_ALL.get(name) or Status(name)


@given(event_dicts())
def test_any_valid_event_parses(doc: dict[str, Any]) -> None:
    """Every event the strategy draws parses, and its fields come through normalised."""
    event = parse(doc, doc["test_id"].encode())
    assert event.event_id == doc["event_id"]
    assert event.event_type == doc["event_type"]
    assert event.test_id == doc["test_id"]
    assert event.oid == doc.get("oid", "")
    assert event.tracking_code == doc.get("tracking_code")
    assert event.status is _expected_status(doc["status"])
    previous = doc.get("previous_status")
    assert event.previous_status is (None if previous is None else _expected_status(previous))
    assert event.reset_type == (doc["reset_type"] if doc["event_type"] == "reset" else None)
    assert event.duration_minutes == doc["duration_minutes"]
    finished = doc.get("finished_on")
    assert event.finished_on == (None if finished is None else date.fromisoformat(finished))
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.date() == utc_date_of(doc["occurred_at"])
    assert event.occurred_at_text == doc["occurred_at"]
    if doc["status"] in COMPLETE_NAMES:
        assert event.results is not None
        assert set(event.results.sections) == set(doc["results"].get("sections") or {})
    else:
        assert event.results is None


@given(
    doc=event_dicts(),
    breach=st.sampled_from(BREACHES),
    section=st.sampled_from(SECTION_NAMES),
    results=results_dicts(),
)
def test_any_single_breach_names_its_field(
    doc: dict[str, Any],
    breach: tuple[str, object, Mapping[str, object]],
    section: str,
    results: dict[str, Any],
) -> None:
    """Whatever valid event a rule is broken in, the error names the broken field."""
    field = break_rule(doc, breach, section, results)
    error = rejection(doc)
    assert error.field == field
    event_id = doc.get("event_id")
    readable = event_id if isinstance(event_id, str) and event_id else None
    assert error.known.get("event_id") == readable


@given(section=st.sampled_from(SECTION_NAMES), data=st.data())
def test_any_valid_section_parses(section: str, data: st.DataObject) -> None:
    """A section drawn valid parses with its values unchanged."""
    raw = data.draw(section_dicts(section))
    doc = contract_example()
    doc["results"]["sections"] = {section: raw}
    results = parse(doc).results
    assert results is not None
    parsed = results.sections[section]
    assert (parsed.level, parsed.score, parsed.percent, parsed.cefr) == (
        raw["level"],
        raw["score"],
        raw["percent"],
        raw["cefr"],
    )
    assert parsed.question_count == raw.get("question_count")


def test_offsets_other_than_utc_give_the_same_instant() -> None:
    """Two spellings of one instant parse to equal ``occurred_at``."""
    east = parse({**contract_example(), "occurred_at": "2026-11-25T21:32:11+05:30"})
    west = parse({**contract_example(), "occurred_at": "2026-11-25T16:02:11Z"})
    assert east.occurred_at == west.occurred_at
    assert east.occurred_at.tzinfo is UTC


def test_occurred_at_before_1901_is_refused_when_it_gives_the_test_date() -> None:
    """Without finished_on, TestDate comes from occurred_at, whose year must then pass 1900."""
    doc = {**contract_example(), "finished_on": None, "occurred_at": "1900-06-01T00:00:00Z"}
    assert rejection(doc).field == "occurred_at"
    dated = {**doc, "finished_on": "2026-11-24"}
    assert parse(dated).occurred_at.year == 1900
