"""The JSON Schemas of ``schemas/``: valid draft 2020-12, true to the contract's examples, the
exam-event schema judging events as ``consumer.events.parse_event`` does, and the outcome,
dead-letter and webhook-data schemas taking what the code builds and refusing what it never
builds."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
from typing import Any, Final

import orjson
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from structlog.testing import capture_logs

from consumer.errors import InvalidEvent
from consumer.events import LEGACY_STATUSES, SECTION_NAMES, EventType, Status, parse_event
from consumer.handler import EventHandler
from consumer.metrics import Metrics
from consumer.outcomes import Outcome, OutcomeRecord
from consumer.payload import build_data, encode_data
from consumer.reporter import OutcomeReporter
from consumer.triggers import Trigger
from tests.factories import CONTRACT_OUTCOME
from tests.fakes import FakePublisher
from tests.schema_strategies import (
    PATHS,
    SCHEMA_FILES,
    broken_event_dicts,
    event_documents,
    load_schema,
    near_dates,
    near_timestamps,
    outcome_records,
    validator,
)
from tests.strategies import (
    contract_example,
    event_dicts,
    finished_on_dates,
    rfc3339_timestamps,
)

EVENT: Final = validator("exam-event.schema.json")
OUTCOME: Final = validator("outcome.schema.json")
DEAD_LETTER: Final = validator("dead-letter-headers.schema.json")
DATA: Final = validator("webhook-data.schema.json")

# The event and the webhook data of the README's "by example" sections.
README_EVENT: Final[dict[str, Any]] = {
    **contract_example(),
    "results": {
        "score_report_url": "https://results.example.org/r/50613490BP?sig=a+b&x=1",
        "overall": {"level": 4.3, "cefr": "B2"},
        "sections": {
            "writing": {"level": 3.0, "score": 62, "percent": 62, "cefr": "B1", "question_count": 2}
        },
    },
}
README_DATA: Final[dict[str, Any]] = {
    "OID": "crm-000042",
    "TestID": "50613490BP",
    "Duration": 87,
    "TestDate": "11/24/2026",
    "TestMonth": 11,
    "TestDay": 24,
    "TestYear": 2026,
    "Status": "Complete",
    "score_report_url": "https://results.example.org/r/50613490BP?sig=a+b&x=1",
    "Overall_Level": 4.3,
    "Overall_cefr": "B2",
    "Writing_Level": 3.0,
    "Writing_Score": 62,
    "Writing_Percent": 62,
    "Writing_cefr": "B1",
    "Writing_Question_Count": 2,
    "Writing_Question_1": "",
    "Writing_Answer_1": "",
    "Writing_Question_2": "",
    "Writing_Answer_2": "",
}


def parser_accepts(raw: bytes | None, key: bytes | None = None) -> bool:
    try:
        parse_event(raw, key)
    except InvalidEvent:
        return False
    return True


def errors_of(checker: Draft202012Validator, instance: object) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in checker.iter_errors(instance)]


def integral_floats_as_ints(value: Any) -> Any:
    """``value`` with every float that has no fraction written as an integer: 87.0 as 87.

    JSON Schema knows a number by its value alone, the parser also by its spelling: the first
    blind spot named in the event schema's ``$comment``.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    return value


_OFFSET_TIME: Final = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"([+-])([0-9]{2}:[0-9]{2})"
)


def crosses_utc_boundary(doc: Any) -> bool:
    """``occurred_at`` is on a day where its UTC offset may move it across a year the parser
    checks in UTC (the schema's other documented blind spot)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("occurred_at"), str):
        return False
    match = _OFFSET_TIME.fullmatch(doc["occurred_at"])
    if match is None:
        return False
    day, sign, offset = match.groups()
    if offset == "00:00":
        return False
    edges = {"0001-01-01": "+", "9999-12-31": "-"}
    if doc.get("finished_on") is None:
        edges |= {"1901-01-01": "+", "1900-12-31": "-"}
    return edges.get(day) == sign


def with_changes(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(changes)
    return out


# --------------------------------------------------------------------------------------------
# The schemas themselves


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_a_valid_draft_2020_12_schema_with_id_title_and_description(name: str) -> None:
    """Each file is a draft 2020-12 schema that says what it is."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("urn:itep-webhooks:schema:")
    assert schema["title"]
    assert schema["description"]


def test_schema_ids_are_distinct() -> None:
    """No two schemas share an ``$id``."""
    ids = [load_schema(name)["$id"] for name in SCHEMA_FILES]
    assert len(set(ids)) == len(SCHEMA_FILES)


def test_event_schema_names_the_parsers_statuses_types_and_sections() -> None:
    """Statuses (with the legacy names), event types and sections are the parser's own."""
    schema = load_schema("exam-event.schema.json")
    assert schema["$defs"]["status"]["enum"] == [s.value for s in Status] + list(LEGACY_STATUSES)
    assert schema["properties"]["event_type"]["enum"] == [t.value for t in EventType]
    sections = schema["$defs"]["results"]["properties"]["sections"]["properties"]
    assert tuple(sections) == SECTION_NAMES


def test_outcome_schema_names_every_field_outcome_trigger_and_status_of_the_code() -> None:
    """Required fields are the record's, in order; the enums are the code's."""
    schema = load_schema("outcome.schema.json")
    assert schema["required"] == [f.name for f in dataclasses.fields(OutcomeRecord)]
    assert list(schema["properties"]) == schema["required"]
    assert schema["properties"]["outcome"]["enum"] == [o.value for o in Outcome]
    assert schema["properties"]["trigger"]["enum"] == [*(t.value for t in Trigger), None]
    assert schema["properties"]["exam_status"]["enum"] == [*(s.value for s in Status), None]


def test_data_schema_status_is_the_normalised_status() -> None:
    """The webhook's Status is one of the eight states, never a legacy name."""
    schema = load_schema("webhook-data.schema.json")
    assert schema["properties"]["Status"]["enum"] == [s.value for s in Status]


# --------------------------------------------------------------------------------------------
# The contract's examples


@pytest.mark.parametrize("doc", [contract_example(), README_EVENT], ids=["contract", "readme"])
def test_documented_example_events_fit_the_event_schema(doc: dict[str, Any]) -> None:
    """The example events of CONTRACT section 2 and of the README are valid."""
    assert errors_of(EVENT, doc) == []


def test_contract_outcome_example_fits_the_outcome_schema() -> None:
    """The example of CONTRACT section 5 is a valid outcome record."""
    assert errors_of(OUTCOME, CONTRACT_OUTCOME) == []


def test_documented_webhook_data_fits_the_data_schema() -> None:
    """The README's data example, and the data the contract's example event becomes."""
    built = orjson.loads(encode_data(parse_event(orjson.dumps(contract_example()))))
    assert errors_of(DATA, README_DATA) == []
    assert errors_of(DATA, built) == []


def test_contract_dead_letter_headers_fit_the_headers_schema() -> None:
    """``error`` names the field and the rule, ``source`` is topic/partition/offset."""
    headers = {
        "error": "duration_minutes: must be an integer >= 0, got -5",
        "source": "exam-events/2/41",
    }
    assert errors_of(DEAD_LETTER, headers) == []


# --------------------------------------------------------------------------------------------
# The event schema judges as the parser does


def assert_schema_judges_as_parser(doc: Any) -> None:
    as_read = orjson.loads(orjson.dumps(doc))
    assume(not crosses_utc_boundary(as_read))
    parser_ok = parser_accepts(orjson.dumps(integral_floats_as_ints(as_read)))
    event("parser accepts" if parser_ok else "parser refuses")
    assert EVENT.is_valid(as_read) == parser_ok, (parser_ok, errors_of(EVENT, as_read))


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_event_schema_and_parser_agree_on_events_broken_at_each_field(
    path: str, data: st.DataObject
) -> None:
    """An event broken at this field (and now and then elsewhere): the schema's verdict is the
    parser's, outside the blind spots its ``$comment`` names (integral floats, UTC arithmetic)."""
    assert_schema_judges_as_parser(data.draw(broken_event_dicts(path)))


@settings(max_examples=200, deadline=None)
@given(doc=event_documents())
def test_event_schema_accepts_exactly_the_documents_the_parser_accepts(doc: Any) -> None:
    """Valid, broken and non-object documents alike: the schema's verdict is the parser's."""
    assert_schema_judges_as_parser(doc)


@settings(max_examples=500, deadline=None)
@given(
    occurred_at=st.one_of(near_timestamps(), rfc3339_timestamps()),
    finished_on=st.sampled_from((None, "absent", "2026-11-24")),
)
def test_event_schema_and_parser_agree_on_every_occurred_at(
    occurred_at: str, finished_on: str | None
) -> None:
    """Near-miss and valid timestamps, with finished_on null, absent or set: one verdict."""
    doc = {**contract_example(), "occurred_at": occurred_at, "finished_on": finished_on}
    if finished_on == "absent":
        del doc["finished_on"]
    assert_schema_judges_as_parser(doc)


@settings(max_examples=300, deadline=None)
@given(finished_on=st.one_of(near_dates(), finished_on_dates()))
def test_event_schema_and_parser_agree_on_every_finished_on(finished_on: str) -> None:
    """Near-miss and valid dates: one verdict."""
    assert_schema_judges_as_parser({**contract_example(), "finished_on": finished_on})


NOON: Final = "T12:00:00Z"
EDGES: Final[list[tuple[str, dict[str, Any], bool]]] = [
    ("leap day", {"occurred_at": "2024-02-29" + NOON}, True),
    ("leap day of 2000", {"occurred_at": "2000-02-29" + NOON}, True),
    ("Feb 29 of a common year", {"occurred_at": "2023-02-29" + NOON}, False),
    ("Feb 29 of 1900", {"occurred_at": "1900-02-29" + NOON, "finished_on": "2026-01-01"}, False),
    ("April 31", {"occurred_at": "2026-04-31" + NOON}, False),
    ("hour 24", {"occurred_at": "2026-11-25T24:00:00Z"}, False),
    ("leap second", {"occurred_at": "2026-12-31T23:59:60Z"}, False),
    ("no seconds", {"occurred_at": "2026-11-25T16:02Z"}, False),
    ("offset 23:59", {"occurred_at": "2026-11-25T16:02:11+23:59"}, True),
    ("offset 24:00", {"occurred_at": "2026-11-25T16:02:11-24:00"}, False),
    ("offset minutes 60", {"occurred_at": "2026-11-25T16:02:11+05:60"}, False),
    ("offset minutes 99", {"occurred_at": "2026-11-25T16:02:11+05:99"}, False),
    ("offset 23:60", {"occurred_at": "2026-11-25T16:02:11+23:60"}, False),
    ("offset without colon", {"occurred_at": "2026-11-25T16:02:11+0500"}, False),
    ("space and lower-case z", {"occurred_at": "2026-11-25 16:02:11z"}, True),
    ("ten fraction digits", {"occurred_at": "2026-11-25T16:02:11.1234567890Z"}, True),
    ("a dot and no digits", {"occurred_at": "2026-11-25T16:02:11.Z"}, False),
    ("trailing newline", {"occurred_at": "2026-11-25T16:02:11Z\n"}, False),
    ("Arabic-Indic digits", {"occurred_at": "٢٠٢٦-11-25T16:02:11Z"}, False),
    ("year 0", {"occurred_at": "0000-01-01T00:00:00Z"}, False),
    ("year 1 with finished_on", {"occurred_at": "0001-01-01T00:00:00Z"}, True),
    ("1900 with no finished_on", {"occurred_at": "1900-06-01" + NOON, "finished_on": None}, False),
    (
        "1900 with finished_on absent",
        {"occurred_at": "1900-06-01" + NOON, "finished_on": ...},
        False,
    ),
    ("1901 with no finished_on", {"occurred_at": "1901-06-01" + NOON, "finished_on": None}, True),
    ("finished_on in 1900", {"finished_on": "1900-12-31"}, False),
    ("finished_on in 1901", {"finished_on": "1901-01-01"}, True),
    ("finished_on Feb 29 2023", {"finished_on": "2023-02-29"}, False),
    ("finished_on with a time", {"finished_on": "2026-11-24T00:00:00Z"}, False),
    ("finished_on newline", {"finished_on": "2026-11-24\n"}, False),
    ("event_id with a space", {"event_id": "id 1"}, True),
    ("event_id with a tab", {"event_id": "id\t1"}, False),
    ("event_id not ASCII", {"event_id": "idé"}, False),
    ("event_id empty", {"event_id": ""}, False),
    ("schema_version true", {"schema_version": True}, False),
    ("schema_version as text", {"schema_version": "1"}, False),
    ("schema_version 2", {"schema_version": 2}, False),
    ("unknown event_type", {"event_type": "Reset"}, False),
    ("reset without reset_type", {"event_type": "reset", "reset_type": None}, False),
    ("reset with empty reset_type", {"event_type": "reset", "reset_type": ""}, False),
    ("reset_type on a status change", {"reset_type": "full"}, False),
    ("reset_type absent", {"reset_type": ...}, True),
    ("legacy Completed without results", {"status": "Completed", "results": ...}, False),
    ("Review with garbage results", {"status": "Review", "results": "garbage"}, True),
    ("status null", {"status": None}, False),
    ("previous_status legacy", {"previous_status": "Started"}, True),
    ("previous_status empty", {"previous_status": ""}, False),
    ("oid absent", {"oid": ...}, True),
    ("oid null", {"oid": None}, False),
    ("tracking_code null", {"tracking_code": None}, True),
    ("tracking_code a number", {"tracking_code": 5}, False),
    ("test_id empty", {"test_id": ""}, False),
    ("duration_minutes negative", {"duration_minutes": -1}, False),
    ("duration_minutes as text", {"duration_minutes": "87"}, False),
    ("an unknown field", {"x_future_field": {"any": "thing"}}, True),
]
_RESULT_EDGES: Final[list[tuple[str, str, Any, bool]]] = [
    ("sections null", "sections", None, True),
    ("sections a list", "sections", [], False),
    ("an unknown section", "sections.essay", {"level": 1}, False),
    ("writing without question_count", "sections.writing.question_count", ..., False),
    ("writing question_count negative", "sections.writing.question_count", -1, False),
    ("grammar with an odd question_count", "sections.grammar.question_count", "x", True),
    ("level just above 6", "sections.reading.level", 6.0000001, False),
    ("level 6", "overall.level", 6, True),
    ("level a boolean", "overall.level", True, False),
    ("percent 100", "sections.listening.percent", 100, True),
    ("percent above 100", "sections.listening.percent", 100.5, False),
    ("score negative", "sections.speaking.score", -0.5, False),
    ("score huge", "sections.speaking.score", 1e300, True),
    ("cefr empty", "overall.cefr", "", False),
    ("score_report_url empty", "score_report_url", "", True),
    ("score_report_url absent", "score_report_url", ..., False),
    ("overall absent", "overall", ..., False),
    ("an unknown result field", "x_note", 1, True),
]


def _edge_doc(changes: dict[str, Any]) -> dict[str, Any]:
    doc = contract_example()
    for name, value in changes.items():
        if value is ...:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def _result_edge_doc(path: str, value: Any) -> dict[str, Any]:
    doc = contract_example()
    *parents, last = path.split(".")
    target = doc["results"]
    for name in parents:
        target = target[name]
    if value is ...:
        target.pop(last, None)
    else:
        target[last] = value
    return doc


EDGE_DOCS: Final = [(why, _edge_doc(changes), ok) for why, changes, ok in EDGES] + [
    (why, _result_edge_doc(path, value), ok) for why, path, value, ok in _RESULT_EDGES
]


@pytest.mark.parametrize(("why", "doc", "valid"), EDGE_DOCS, ids=[e[0] for e in EDGE_DOCS])
def test_edge_cases_are_judged_alike_by_schema_and_parser(
    why: str, doc: dict[str, Any], valid: bool
) -> None:
    """A field at or past one of its bounds: schema and parser both give the expected verdict."""
    assert parser_accepts(orjson.dumps(doc)) is valid, why
    assert EVENT.is_valid(doc) is valid, errors_of(EVENT, doc)


@pytest.mark.parametrize(
    "doc",
    [
        {**contract_example(), "schema_version": 1.0},
        {**contract_example(), "duration_minutes": 87.0},
        _result_edge_doc("sections.writing.question_count", 2.0),
    ],
    ids=["schema_version", "duration_minutes", "question_count"],
)
def test_an_integer_written_as_a_float_is_the_schemas_first_blind_spot(doc: dict[str, Any]) -> None:
    """JSON Schema counts 87.0 as an integer; the parser refuses it (see the ``$comment``)."""
    assert EVENT.is_valid(doc)
    assert not parser_accepts(orjson.dumps(doc))


@pytest.mark.parametrize(
    ("occurred_at", "finished_on", "schema_ok"),
    [
        ("1901-01-01T00:30:00+01:00", None, True),
        ("1900-12-31T23:00:00-02:00", None, False),
        ("0001-01-01T00:00:00+00:01", "2026-11-24", True),
        ("9999-12-31T23:59:59-00:01", "2026-11-24", True),
    ],
)
def test_utc_arithmetic_across_a_year_is_the_schemas_second_blind_spot(
    occurred_at: str, finished_on: str | None, schema_ok: bool
) -> None:
    """The parser judges the UTC instant, the schema the year as written: they differ here."""
    doc = {**contract_example(), "occurred_at": occurred_at, "finished_on": finished_on}
    assert crosses_utc_boundary(doc)
    assert EVENT.is_valid(doc) is schema_ok
    assert parser_accepts(orjson.dumps(doc)) is not schema_ok


def test_the_record_key_is_outside_the_schemas_sight() -> None:
    """A key other than the test_id is refused by the parser; the value alone is valid."""
    doc = contract_example()
    assert EVENT.is_valid(doc)
    assert not parser_accepts(orjson.dumps(doc), key=b"another-test")


# --------------------------------------------------------------------------------------------
# Outcome records


@settings(max_examples=300, deadline=None)
@given(record=outcome_records())
def test_every_outcome_the_service_builds_fits_the_outcome_schema(record: OutcomeRecord) -> None:
    """Delivered, failed, retried, held, skipped and crashed outcomes, as published."""
    doc = orjson.loads(record.to_json())
    assert errors_of(OUTCOME, doc) == []


# A rejected record as ``rejected_outcome`` writes it when only the event_id could be read.
REJECTED_OUTCOME: Final[dict[str, Any]] = {
    **dict.fromkeys(CONTRACT_OUTCOME),
    "schema_version": 1,
    "event_id": "e-1",
    "outcome": "rejected",
    "reason": "invalid_event",
    "attempt": 0,
    "recorded_at": "2026-11-25T16:02:11.087Z",
}
LATER: Final = "2026-11-25T16:02:16.087Z"
OUTCOME_BREAKS: Final[list[tuple[str, dict[str, Any], dict[str, Any]]]] = [
    ("delivered with a reason", CONTRACT_OUTCOME, {"reason": "http_200"}),
    ("delivered with a 503", CONTRACT_OUTCOME, {"http_status": 503}),
    ("delivered on attempt 0", CONTRACT_OUTCOME, {"attempt": 0}),
    ("delivered with next_attempt_at", CONTRACT_OUTCOME, {"next_attempt_at": LATER}),
    ("a status without latency", CONTRACT_OUTCOME, {"latency_ms": None}),
    ("completed with another status", CONTRACT_OUTCOME, {"exam_status": "Problem"}),
    ("a legacy exam_status", CONTRACT_OUTCOME, {"exam_status": "Completed"}),
    ("an unknown outcome", CONTRACT_OUTCOME, {"outcome": "sent"}),
    ("a reason not snake_case", CONTRACT_OUTCOME, {"outcome": "failed", "reason": "HTTP 404"}),
    ("failed without a reason", CONTRACT_OUTCOME, {"outcome": "failed"}),
    ("retry without next_attempt_at", CONTRACT_OUTCOME, {"outcome": "retry_scheduled"}),
    (
        "skipped with next_attempt_at",
        CONTRACT_OUTCOME,
        {"outcome": "skipped", "reason": "no_tracking_code", "next_attempt_at": LATER},
    ),
    ("a host with a path", CONTRACT_OUTCOME, {"endpoint_host": "hooks.example.edu/itep"}),
    ("a host with credentials", CONTRACT_OUTCOME, {"endpoint_host": "u@hooks.example.edu"}),
    ("recorded_at in seconds", CONTRACT_OUTCOME, {"recorded_at": "2026-11-25T16:02:11Z"}),
    ("recorded_at not UTC", CONTRACT_OUTCOME, {"recorded_at": "2026-11-25T16:02:11.087+01:00"}),
    ("an event_id of 1025 characters", CONTRACT_OUTCOME, {"event_id": "e" * 1025}),
    ("a test_id null", CONTRACT_OUTCOME, {"test_id": None}),
    ("event_occurred_at not a timestamp", CONTRACT_OUTCOME, {"event_occurred_at": "yesterday"}),
    ("schema_version 2", CONTRACT_OUTCOME, {"schema_version": 2}),
    ("rejected with a trigger", REJECTED_OUTCOME, {"trigger": "completed"}),
    ("rejected with another reason", REJECTED_OUTCOME, {"reason": "http_404"}),
    ("rejected after an attempt", REJECTED_OUTCOME, {"attempt": 1}),
    ("rejected with no event_id", REJECTED_OUTCOME, {"event_id": None}),
    ("rejected with an empty oid", REJECTED_OUTCOME, {"oid": ""}),
]


@pytest.mark.parametrize(
    ("why", "base", "changes"), OUTCOME_BREAKS, ids=[b[0] for b in OUTCOME_BREAKS]
)
def test_outcome_schema_refuses_records_the_service_never_writes(
    why: str, base: dict[str, Any], changes: dict[str, Any]
) -> None:
    """A valid record changed so that it breaks one rule of CONTRACT section 5."""
    assert OUTCOME.is_valid(base)
    assert not OUTCOME.is_valid(with_changes(base, **changes)), why


@pytest.mark.parametrize("name", list(CONTRACT_OUTCOME))
def test_outcome_schema_refuses_a_record_missing_a_field(name: str) -> None:
    """Every field is written, null when it does not apply."""
    doc = dict(CONTRACT_OUTCOME)
    del doc[name]
    assert not OUTCOME.is_valid(doc)


def test_outcome_schema_takes_a_rejected_record_with_only_an_event_id() -> None:
    """A rejected event may have nothing readable but its event_id."""
    assert errors_of(OUTCOME, REJECTED_OUTCOME) == []


# --------------------------------------------------------------------------------------------
# Dead letters and rejections


def _rejecting_handler(publisher: FakePublisher) -> EventHandler:
    metrics = Metrics()
    return EventHandler(
        store=None,  # type: ignore[arg-type]  # rejecting looks nothing up
        deliverer=None,  # type: ignore[arg-type]  # nor delivers anything
        reporter=OutcomeReporter(publisher, metrics),
        metrics=metrics,
    )


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(event_documents().map(orjson.dumps), st.binary(max_size=16), st.none()),
    key=st.one_of(st.none(), st.binary(max_size=12), st.just(b"50613490BP")),
    partition=st.integers(min_value=0, max_value=999),
    offset=st.integers(min_value=0, max_value=2**62),
)
def test_every_dead_letter_and_rejection_fits_its_schema(
    value: bytes | None, key: bytes | None, partition: int, offset: int
) -> None:
    """The headers ``EventHandler.reject`` writes and the ``rejected`` outcome it publishes."""
    try:
        parse_event(value, key)
    except InvalidEvent as exc:
        error = exc
    else:
        assume(False)
    publisher = FakePublisher()
    source = f"test-events-0f3a/{partition}/{offset}"
    with capture_logs():
        asyncio.run(_rejecting_handler(publisher).reject(key, value, error, source))
    [(_, _, header_error, header_source)] = publisher.dead_letters
    headers = {"error": header_error, "source": header_source}
    assert errors_of(DEAD_LETTER, headers) == []
    for record in publisher.outcomes:
        assert errors_of(OUTCOME, orjson.loads(record.to_json())) == []


DEAD_LETTER_BREAKS: Final[list[tuple[str, dict[str, Any]]]] = [
    ("an error naming no field", {"error": "something went wrong"}),
    ("an error naming an unknown field", {"error": "score: must be a number"}),
    ("an error of 513 characters", {"error": "value: " + "x" * 506}),
    ("an empty error", {"error": ""}),
    ("a source without an offset", {"source": "exam-events/0"}),
    ("a source with a negative partition", {"source": "exam-events/-1/5"}),
    ("a source with a trailing newline", {"source": "exam-events/0/5\n"}),
    ("a source with a bad topic name", {"source": "exam events/0/5"}),
    ("a header that is not a string", {"source": 5}),
]


@pytest.mark.parametrize(
    ("why", "changes"), DEAD_LETTER_BREAKS, ids=[b[0] for b in DEAD_LETTER_BREAKS]
)
def test_dead_letter_schema_refuses_headers_the_service_never_writes(
    why: str, changes: dict[str, Any]
) -> None:
    """Valid headers changed so that one breaks its rule."""
    headers = {"error": "status: must be one of Ready; got 'Done'", "source": "exam-events/0/5"}
    assert DEAD_LETTER.is_valid(headers)
    assert not DEAD_LETTER.is_valid({**headers, **changes}), why


@pytest.mark.parametrize("name", ["error", "source"])
def test_dead_letter_schema_requires_both_headers(name: str) -> None:
    """``error`` and ``source`` are always there."""
    headers = {"error": "value: is not valid JSON", "source": "exam-events/0/5"}
    del headers[name]
    assert not DEAD_LETTER.is_valid(headers)


# --------------------------------------------------------------------------------------------
# Webhook data


@settings(max_examples=300, deadline=None)
@given(doc=event_dicts())
def test_every_webhook_data_fits_the_data_schema(doc: dict[str, Any]) -> None:
    """Whatever valid event, its ``data`` as sent is valid and names only known keys."""
    sent = orjson.loads(encode_data(parse_event(orjson.dumps(doc))))
    assert errors_of(DATA, sent) == []
    assert set(sent) <= set(load_schema("webhook-data.schema.json")["properties"])


def _not_complete() -> dict[str, Any]:
    doc = {**contract_example(), "status": "Invalidated", "previous_status": "Review"}
    return dict(build_data(parse_event(orjson.dumps(doc))))


DATA_BREAKS: Final[list[tuple[str, dict[str, Any], dict[str, Any]]]] = [
    ("results on an Invalidated test", _not_complete(), {"Overall_Level": 4.3}),
    ("a url on an Invalidated test", _not_complete(), {"score_report_url": "https://x.example"}),
    ("a section on an Invalidated test", _not_complete(), {"Grammar_Level": 4.0}),
    ("a legacy status", _not_complete(), {"Status": "Technical Difficulty"}),
    ("Complete with an empty level", README_DATA, {"Overall_Level": ""}),
    ("Complete with an empty cefr", README_DATA, {"Overall_cefr": ""}),
    ("half a section", README_DATA, {"Grammar_Level": 4.0, "Grammar_Score": 41}),
    ("a writing answer", README_DATA, {"Writing_Answer_1": "essay"}),
    ("a level above 6", README_DATA, {"Writing_Level": 6.5}),
    ("a zero-padded date", README_DATA, {"TestDate": "11/04/2026"}),
    ("February 30", README_DATA, {"TestDate": "2/30/2026"}),
    ("Feb 29 of 2100", README_DATA, {"TestDate": "2/29/2100"}),
    ("a year of 1900", README_DATA, {"TestDate": "1/1/1900"}),
    ("an ISO date", README_DATA, {"TestDate": "2026-11-24"}),
    ("month 13", README_DATA, {"TestMonth": 13}),
    ("Duration as text", README_DATA, {"Duration": "87"}),
    ("an empty TestID", README_DATA, {"TestID": ""}),
]


@pytest.mark.parametrize(("why", "base", "changes"), DATA_BREAKS, ids=[b[0] for b in DATA_BREAKS])
def test_data_schema_refuses_data_the_service_never_sends(
    why: str, base: dict[str, Any], changes: dict[str, Any]
) -> None:
    """A valid ``data`` changed so that it breaks the legacy field set's rules."""
    assert DATA.is_valid(base)
    assert not DATA.is_valid(with_changes(base, **changes)), why


def test_data_schema_takes_a_leap_day_and_refuses_a_missing_writing_count() -> None:
    """2/29/2024 is a date; a writing group without Writing_Question_Count is not whole."""
    assert DATA.is_valid(with_changes(README_DATA, TestDate="2/29/2024"))
    incomplete = with_changes(README_DATA)
    del incomplete["Writing_Question_Count"]
    assert not DATA.is_valid(incomplete)
