"""The upstream library and ``itep-events``, without a broker: build, validate, parse, generate."""

from __future__ import annotations

import itertools
import re
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone

import orjson
import pytest

from consumer.errors import ConfigError, InvalidEvent
from consumer.events import EventType, Results, SectionResult, Status, parse_event
from producers.builder import (
    ExamEventMessage,
    encode_document,
    format_timestamp,
    parse_json_lines,
    with_defaults,
)
from producers.cli import build_parser, event_from_args, main, parse_section, settings_from_args
from producers.loadgen import generate_events
from producers.publisher import EventPublisher, PublisherSettings

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")
FIXED = datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC)


def complete_event(**changes: object) -> ExamEventMessage:
    fields: dict[str, object] = {
        "test_id": "50613490BP",
        "status": Status.COMPLETE,
        "previous_status": Status.REVIEW,
        "tracking_code": "ACME-UNI",
        "oid": "crm-000042",
        "duration_minutes": 87,
        "finished_on": date(2026, 11, 24),
        "results": Results(
            score_report_url="https://results.example.org/r/50613490BP?sig=a+b&x=1",
            overall_level=4.3,
            overall_cefr="B2",
            sections={
                "grammar": SectionResult(level=4.0, score=41, percent=67, cefr="B1"),
                "writing": SectionResult(
                    level=3.0, score=62, percent=62, cefr="B1", question_count=2
                ),
                "speaking": SectionResult(level=3.0, score=62, percent=62, cefr="C1+"),
            },
        ),
    }
    fields.update(changes)
    return ExamEventMessage(**fields)  # type: ignore[arg-type]


# --- the builder -------------------------------------------------------------------------------


def test_built_event_is_accepted_by_the_consumer_parser_with_every_field_intact():
    message = complete_event(event_id="e-1", occurred_at=FIXED)
    encoded = message.encode()
    event = parse_event(encoded.value, encoded.key)
    assert encoded.key == b"50613490BP"
    assert event == encoded.event
    assert event.event_id == "e-1"
    assert event.event_type is EventType.STATUS_CHANGED
    assert event.occurred_at == FIXED
    assert event.occurred_at_text == "2026-11-25T16:02:11Z"
    assert (event.test_id, event.oid, event.tracking_code) == (
        "50613490BP",
        "crm-000042",
        "ACME-UNI",
    )
    assert (event.status, event.previous_status) == (Status.COMPLETE, Status.REVIEW)
    assert event.duration_minutes == 87
    assert event.finished_on == date(2026, 11, 24)
    assert event.results == message.results


def test_defaults_are_a_uuid4_event_id_now_in_utc_with_z_and_schema_version_1():
    before = datetime.now(UTC).replace(microsecond=0)
    message = ExamEventMessage(test_id="T1", status="Ready")
    doc = message.to_document()
    assert uuid.UUID(message.event_id).version == 4
    assert isinstance(message.occurred_at, str)
    assert RFC3339_Z.match(message.occurred_at)
    occurred = datetime.fromisoformat(message.occurred_at.replace("Z", "+00:00"))
    assert before <= occurred <= datetime.now(UTC)
    assert doc["schema_version"] == 1
    assert doc["event_type"] == "status_changed"
    assert doc["duration_minutes"] == 0
    assert doc["oid"] == ""
    assert doc["results"] is None


def test_each_built_event_gets_its_own_event_id():
    ids = {ExamEventMessage(test_id="T1", status="Ready").event_id for _ in range(100)}
    assert len(ids) == 100


def test_document_keeps_a_plus_and_ampersand_in_the_score_report_url_verbatim():
    value = complete_event().encode().value
    assert orjson.loads(value)["results"]["score_report_url"].endswith("?sig=a+b&x=1")


def test_writing_question_count_is_written_only_for_the_section_that_has_one():
    sections = complete_event().to_document()["results"]["sections"]
    assert sections["writing"]["question_count"] == 2
    assert "question_count" not in sections["grammar"]


def test_key_is_the_test_id_in_utf8():
    assert ExamEventMessage(test_id="Prüfung1", status="Ready").encode().key == "Prüfung1".encode()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"duration_minutes": -1}, "duration_minutes"),
        ({"status": "Done"}, "status"),
        ({"previous_status": "Done"}, "previous_status"),
        ({"event_type": "reset"}, "reset_type"),
        ({"reset_type": "full"}, "reset_type"),
        ({"results": None}, "results"),
        ({"finished_on": "24/11/2026"}, "finished_on"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"test_id": ""}, "test_id"),
        ({"event_id": ""}, "event_id"),
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_an_event_breaking_a_contract_rule_raises_invalid_event_naming_the_field(changes, field):
    with pytest.raises(InvalidEvent) as caught:
        complete_event(**changes).encode()
    assert caught.value.field == field


def test_a_section_level_out_of_range_is_named_by_its_dotted_path():
    bad = Results("", 4.0, "B2", {"grammar": SectionResult(7.5, 1, 1, "C2")})
    with pytest.raises(InvalidEvent) as caught:
        complete_event(results=bad).encode()
    assert caught.value.field == "results.sections.grammar.level"


def test_legacy_status_spellings_are_accepted_and_normalised():
    event = ExamEventMessage(test_id="T1", status="Started").encode().event
    assert event.status is Status.INCOMPLETE


def test_format_timestamp_converts_to_utc_with_z():
    moment = datetime(2026, 11, 25, 18, 2, 11, 87_000, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2026-11-25T16:02:11.087Z"
    assert format_timestamp(FIXED) == "2026-11-25T16:02:11Z"


def test_format_timestamp_refuses_a_naive_datetime():
    with pytest.raises(InvalidEvent) as caught:
        format_timestamp(datetime(2026, 11, 25, 16, 2, 11))  # noqa: DTZ001 -- the point
    assert caught.value.field == "occurred_at"


def test_encode_document_derives_the_key_from_the_test_id():
    doc = complete_event().to_document()
    assert encode_document(doc).key == b"50613490BP"


def test_with_defaults_fills_only_missing_fields_and_keeps_nulls():
    doc = with_defaults({"test_id": "T1", "event_type": None})
    assert doc["schema_version"] == 1
    assert uuid.UUID(doc["event_id"]).version == 4
    assert RFC3339_Z.match(doc["occurred_at"])
    assert doc["event_type"] is None


# --- the publisher, without a broker -----------------------------------------------------------


async def test_publish_raises_invalid_event_before_touching_the_producer():
    """The publisher is never started: reaching the producer would raise RuntimeError."""
    publisher = EventPublisher("127.0.0.1:1", "exam-events")
    with pytest.raises(InvalidEvent):
        await publisher.publish(complete_event(duration_minutes=-5))


async def test_publish_many_validates_every_event_before_sending_any():
    publisher = EventPublisher("127.0.0.1:1", "exam-events")
    events = [complete_event(), complete_event(status="Bogus"), complete_event()]
    with pytest.raises(InvalidEvent) as caught:
        await publisher.publish_many(events)
    assert caught.value.field == "status"


async def test_publish_refuses_an_encoded_event_whose_bytes_were_tampered_with():
    publisher = EventPublisher("127.0.0.1:1", "exam-events")
    encoded = complete_event().encode()
    forged = type(encoded)(key=b"other", value=encoded.value, event=encoded.event)
    with pytest.raises(InvalidEvent) as caught:
        await publisher.publish(forged)
    assert caught.value.field == "key"


async def test_publishing_on_a_publisher_that_was_not_started_is_an_error():
    publisher = EventPublisher("127.0.0.1:1", "exam-events")
    with pytest.raises(RuntimeError, match="not started"):
        await publisher.publish_raw(b"k", b"v")


def test_publisher_settings_default_to_the_local_stack():
    assert PublisherSettings.from_env({}) == PublisherSettings("127.0.0.1:9092", "exam-events")


def test_publisher_settings_ignore_unrelated_bad_settings():
    settings = PublisherSettings.from_env({"DATABASE_URL": "mysql://x", "EXAM_EVENTS_TOPIC": "t"})
    assert settings.topic == "t"


def test_a_bad_bootstrap_setting_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as caught:
        PublisherSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "no-port"})
    assert caught.value.name == "KAFKA_BOOTSTRAP_SERVERS"


# --- the CLI's arguments -----------------------------------------------------------------------


def parse(*argv: str) -> ExamEventMessage:
    return event_from_args(build_parser().parse_args(["publish", *argv]))


def test_publish_flags_build_the_event_they_describe():
    message = parse(
        "--test-id", "50613490BP",
        "--status", "Complete",
        "--previous-status", "Review",
        "--tracking-code", "ACME-UNI",
        "--oid", "crm-000042",
        "--duration-minutes", "87",
        "--finished-on", "2026-11-24",
        "--occurred-at", "2026-11-25T16:02:11Z",
        "--event-id", "0b7f7c1e",
        "--score-report-url", "https://results.example.org/r/1?sig=a+b&x=1",
        "--overall-level", "4.3",
        "--overall-cefr", "B2",
        "--section", "grammar:level=4.0,score=41,percent=67,cefr=B1",
        "--section", "writing:level=3,score=62,percent=62,cefr=B1,question_count=2",
    )  # fmt: skip
    assert message == ExamEventMessage(
        test_id="50613490BP",
        status="Complete",
        previous_status="Review",
        tracking_code="ACME-UNI",
        oid="crm-000042",
        duration_minutes=87,
        finished_on="2026-11-24",
        occurred_at="2026-11-25T16:02:11Z",
        event_id="0b7f7c1e",
        results=Results(
            score_report_url="https://results.example.org/r/1?sig=a+b&x=1",
            overall_level=4.3,
            overall_cefr="B2",
            sections={
                "grammar": SectionResult(level=4.0, score=41, percent=67, cefr="B1"),
                "writing": SectionResult(
                    level=3, score=62, percent=62, cefr="B1", question_count=2
                ),
            },
        ),
    )
    assert message.encode().event.results is not None


def test_publish_flags_build_a_reset_event():
    message = parse(
        "--test-id", "T1", "--status", "Ready", "--event-type", "reset", "--reset-type", "full"
    )  # fmt: skip
    event = message.encode().event
    assert (event.event_type, event.reset_type) == (EventType.RESET, "full")


def test_publish_flags_leave_unset_fields_null_and_fill_defaults():
    doc = parse("--test-id", "T1", "--status", "Ready").to_document()
    assert doc["previous_status"] is None
    assert doc["tracking_code"] is None
    assert doc["finished_on"] is None
    assert doc["reset_type"] is None
    assert doc["event_type"] == "status_changed"
    assert doc["duration_minutes"] == 0
    assert uuid.UUID(doc["event_id"]).version == 4


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--status", "Ready"], "test_id"),
        (["--test-id", "T1"], "status"),
        (["--test-id", "T1", "--status", "Ready", "--duration-minutes", "ten"], "duration_minutes"),
        (
            ["--test-id", "T1", "--status", "Complete", "--overall-cefr", "B2"],
            "results.overall.level",
        ),
        (
            [
                "--test-id",
                "T1",
                "--status",
                "Complete",
                "--overall-level",
                "x",
                "--overall-cefr",
                "B",
            ],
            "results.overall.level",
        ),
    ],
)
def test_publish_flags_that_cannot_make_an_event_name_the_field(argv, field):
    with pytest.raises(InvalidEvent) as caught:
        parse(*argv)
    assert caught.value.field == field


def test_section_spec_parses_every_key():
    assert parse_section("writing:level=3.5,score=62,percent=62.5,cefr=C1+,question_count=2") == (
        "writing",
        SectionResult(level=3.5, score=62, percent=62.5, cefr="C1+", question_count=2),
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("grammar", "results.sections"),
        ("grammar:level=4,score=41,percent=67", "results.sections.grammar.cefr"),
        ("grammar:level=high,score=41,percent=67,cefr=B1", "results.sections.grammar.level"),
        ("grammar:level=4,score=41,percent=67,cefr=B1,colour=red", "results.sections.grammar"),
        ("writing:level=4,score=1,percent=1,cefr=B1,question_count=two",
         "results.sections.writing.question_count"),
    ],
)  # fmt: skip
def test_a_bad_section_spec_names_the_field(spec, field):
    with pytest.raises(InvalidEvent) as caught:
        parse_section(spec)
    assert caught.value.field == field


def test_an_unknown_section_name_is_caught_by_validation():
    message = parse(
        "--test-id", "T1", "--status", "Complete", "--overall-level", "4", "--overall-cefr", "B2",
        "--section", "maths:level=4,score=1,percent=1,cefr=B1",
    )  # fmt: skip
    with pytest.raises(InvalidEvent) as caught:
        message.encode()
    assert caught.value.field == "results.sections.maths"


def test_topic_and_bootstrap_flags_override_the_environment():
    args = build_parser().parse_args(
        ["publish", "--topic", "mine", "--bootstrap-servers", "kafka:9093"]
    )
    settings = settings_from_args(args, {"EXAM_EVENTS_TOPIC": "theirs"})
    assert settings == PublisherSettings("kafka:9093", "mine")


def test_cli_rejects_an_invalid_event_with_one_line_naming_the_field_and_exit_2(capsys):
    """Validation comes first: the unreachable broker is never contacted."""
    code = main(
        ["publish", "--bootstrap-servers", "127.0.0.1:1", "--test-id", "T1", "--status",
         "Ready", "--duration-minutes", "-5"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "itep-events: invalid event: duration_minutes: must be an integer >= 0, got -5"
    ]


def test_cli_reports_each_bad_line_of_a_file_and_publishes_nothing(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"test_id": "T1", "status": "Ready", "duration_minutes": 0}\n'
        "\n"
        '{"test_id": "T2", "status": "Ready", "duration_minutes": -1}\n'
        '{"test_id": "T3", "status": "Ready", "duration_minutes": 0}\n'
    )
    code = main(["publish", "--bootstrap-servers", "127.0.0.1:1", "--file", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert f"{path}: line 3: duration_minutes: must be an integer >= 0, got -1" in err
    assert "nothing published" in err


def test_cli_refuses_event_flags_together_with_a_file(tmp_path, capsys):
    code = main(["publish", "--file", str(tmp_path / "x"), "--test-id", "T1"])
    assert code == 2
    assert "--test-id" in capsys.readouterr().err


def test_cli_reports_a_bad_setting_naming_it_and_exits_2(capsys):
    code = main(["publish", "--topic", "no spaces allowed", "--test-id", "T1", "--status", "Ready"])
    assert code == 2
    assert "EXAM_EVENTS_TOPIC" in capsys.readouterr().err


def test_loadgen_flags_accept_a_rate_per_second_and_several_tracking_codes():
    args = build_parser().parse_args(
        ["loadgen", "--count", "10", "--rate", "250/s", "--tracking-code", "A", "B",
         "--tracking-code", "C", "--seed", "7"]
    )  # fmt: skip
    assert (args.count, args.rate, args.tracking_codes, args.seed) == (
        10,
        250.0,
        ["A", "B", "C"],
        7,
    )


# --- JSON lines --------------------------------------------------------------------------------


def test_json_lines_report_the_number_and_field_of_each_bad_line():
    parsed = parse_json_lines(
        [
            b'{"test_id": "T1", "status": "Ready", "duration_minutes": 0}',
            b"",
            b"[1, 2]",
            b'{"test_id": "T2", "status": "Ready", "duration_minutes": 0, "oid": 5}',
            b"{not json",
            b'{"test_id": "T3", "status": "Finished", "duration_minutes": 50}',
        ]
    )
    assert [event.event.test_id for event in parsed.events] == ["T1", "T3"]
    assert [(e.line, e.error.field) for e in parsed.errors] == [
        (3, "value"),
        (4, "oid"),
        (5, "value"),
    ]
    assert str(parsed.errors[1]).startswith("line 4: oid: must be a string")


def test_json_lines_fill_missing_defaults_and_keep_given_ids():
    parsed = parse_json_lines(
        [
            b'{"test_id": "T1", "status": "Ready", "duration_minutes": 0}',
            b'{"test_id": "T1", "status": "Ready", "duration_minutes": 0, "event_id": "mine",'
            b' "occurred_at": "2026-11-25T16:02:11Z"}',
        ]
    )
    first, second = (record.event for record in parsed.events)
    assert uuid.UUID(first.event_id).version == 4
    assert RFC3339_Z.match(first.occurred_at_text)
    assert (second.event_id, second.occurred_at_text) == ("mine", "2026-11-25T16:02:11Z")


# --- the load generator ------------------------------------------------------------------------

# Which status may follow which within one test's lifecycle (a reset may go anywhere earlier).
FOLLOWS = {
    None: {Status.READY},
    Status.READY: {Status.INCOMPLETE, Status.DISABLED},
    Status.INCOMPLETE: {Status.FINISHED, Status.PROBLEM},
    Status.FINISHED: {Status.REVIEW},
    Status.REVIEW: {Status.COMPLETE, Status.INVALIDATED},
}
FINAL = {Status.COMPLETE, Status.INVALIDATED, Status.DISABLED}


def generated(count: int, tests: int, seed: int = 1) -> list[ExamEventMessage]:
    return list(
        generate_events(
            count, tests=tests, tracking_codes=["A", None], seed=seed, clock=lambda: FIXED
        )
    )


def test_loadgen_generates_exactly_count_valid_events_over_at_most_k_tests():
    events = generated(3000, tests=200)
    assert len(events) == 3000
    parsed = [event.encode().event for event in events]
    assert len({event.test_id for event in parsed}) == 200
    assert len({event.event_id for event in parsed}) == 3000


def test_loadgen_lifecycles_run_in_order_per_test():
    by_test: dict[str, list[ExamEventMessage]] = defaultdict(list)
    for message in generated(3000, tests=200):
        by_test[message.test_id].append(message)
    for messages in by_test.values():
        assert messages[0].previous_status is None
        assert messages[0].status == Status.READY
        for before, after in itertools.pairwise(messages):
            assert after.previous_status == before.status
            if after.event_type == EventType.STATUS_CHANGED:
                assert after.status in FOLLOWS[Status(before.status)]
            else:
                assert after.reset_type
                assert after.status in {Status.READY, Status.INCOMPLETE}
            assert after.duration_minutes >= 0


def test_loadgen_runs_each_test_to_its_end_before_retaking_any():
    events = generated(200 * 10, tests=200)
    first_retake = next(i for i, e in enumerate(events) if e.reset_type == "retake")
    finished = {e.test_id for e in events[:first_retake] if e.status in FINAL}
    assert len(finished) == 200


def test_loadgen_mixes_in_problems_invalidations_and_resets():
    statuses = {(e.status, e.event_type) for e in generated(3000, tests=500)}
    assert (Status.PROBLEM, EventType.STATUS_CHANGED) in statuses
    assert (Status.INVALIDATED, EventType.STATUS_CHANGED) in statuses
    assert (Status.COMPLETE, EventType.STATUS_CHANGED) in statuses
    assert any(event_type == EventType.RESET for _, event_type in statuses)


def test_loadgen_complete_events_carry_results_and_others_do_not():
    for message in generated(1000, tests=100):
        assert (message.results is not None) == (message.status == Status.COMPLETE)


def test_loadgen_is_deterministic_for_a_seed():
    assert generated(500, tests=50, seed=7) == generated(500, tests=50, seed=7)
    assert generated(500, tests=50, seed=7) != generated(500, tests=50, seed=8)


def test_loadgen_gives_each_test_one_tracking_code_from_the_list():
    codes: dict[str, set[str | None]] = defaultdict(set)
    for message in generated(1000, tests=100):
        codes[message.test_id].add(message.tracking_code)
    assert all(len(found) == 1 for found in codes.values())
    assert set().union(*codes.values()) == {"A", None}


def test_loadgen_stamps_occurred_at_from_the_clock():
    moments = iter([FIXED, FIXED + timedelta(seconds=1)])
    events = list(generate_events(2, tests=1, seed=1, clock=lambda: next(moments)))
    assert [e.encode().event.occurred_at for e in events] == [FIXED, FIXED + timedelta(seconds=1)]
