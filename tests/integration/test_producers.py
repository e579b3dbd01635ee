"""``EventPublisher`` and ``itep-events`` against the real broker, one fresh topic per test."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from consumer.errors import InvalidEvent
from consumer.events import EventType, Results, SectionResult, Status, parse_event
from producers.builder import ExamEventMessage
from producers.publisher import EventPublisher
from tests.conftest import KAFKA

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED_LINE = re.compile(
    r"^published event_id=(?P<event_id>\S+) test_id=(?P<test_id>\S+) "
    r"partition=(?P<partition>\d+) offset=(?P<offset>\d+)$"
)


async def read_records(topic: str, expected: int, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Read the topic from the start until ``expected`` records have arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def record_count(topic: str, partitions: int = 1) -> int:
    """How many records the topic holds: the sum of its partitions' end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return sum(ends.values())


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``python -m producers`` as a separate process against the local broker."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "producers",
        *args,
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": KAFKA},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def complete_event(test_id: str = "50613490BP") -> ExamEventMessage:
    return ExamEventMessage(
        test_id=test_id,
        status=Status.COMPLETE,
        previous_status=Status.REVIEW,
        tracking_code="ACME-UNI",
        oid="crm-000042",
        duration_minutes=87,
        finished_on="2026-11-24",
        results=Results(
            score_report_url="https://results.example.org/r/1?sig=a+b&x=1",
            overall_level=4.3,
            overall_cefr="B2",
            sections={
                "writing": SectionResult(
                    level=3.0, score=62, percent=62, cefr="B1", question_count=2
                )
            },
        ),
    )


async def test_publisher_publishes_the_exact_key_and_a_value_that_parses_to_the_same_event(
    new_topic,
):
    topic = await new_topic(partitions=3)
    message = complete_event()
    async with EventPublisher(KAFKA, topic) as publisher:
        delivery = await publisher.publish(message)

    [record] = await read_records(topic, 1)
    assert record.key == b"50613490BP"
    assert record.value == message.encode().value
    assert parse_event(record.value, record.key) == message.encode().event
    assert (delivery.topic, delivery.partition, delivery.offset) == (
        topic,
        record.partition,
        record.offset,
    )


async def test_publish_many_lands_every_event_and_keeps_each_tests_order(new_topic):
    topic = await new_topic(partitions=3)
    statuses = [Status.READY, Status.INCOMPLETE, Status.FINISHED, Status.REVIEW]
    messages = [
        ExamEventMessage(test_id=f"T{n}", status=status, duration_minutes=step)
        for step, status in enumerate(statuses)
        for n in range(5)
    ]
    async with EventPublisher(KAFKA, topic) as publisher:
        deliveries = await publisher.publish_many(messages)

    records = await read_records(topic, len(messages))
    assert len(records) == len(messages)
    where = {(r.partition, r.offset): parse_event(r.value, r.key).event_id for r in records}
    assert [where[(d.partition, d.offset)] for d in deliveries] == [m.event_id for m in messages]
    seen: dict[bytes, list[Status]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.key is not None
        seen[record.key].append(parse_event(record.value, record.key).status)
    assert dict(seen) == {f"T{n}".encode(): statuses for n in range(5)}


async def test_publish_raw_sends_the_bytes_unchanged_without_validating_them(new_topic):
    topic = await new_topic()
    async with EventPublisher(KAFKA, topic) as publisher:
        await publisher.publish_raw(b"T1", b'{"schema_version": 1, "duration_minutes": -1')

    [record] = await read_records(topic, 1)
    assert (record.key, record.value) == (b"T1", b'{"schema_version": 1, "duration_minutes": -1')
    with pytest.raises(InvalidEvent):
        parse_event(record.value, record.key)


async def test_a_started_publisher_sends_nothing_when_a_batch_holds_an_invalid_event(new_topic):
    topic = await new_topic()
    async with EventPublisher(KAFKA, topic) as publisher:
        with pytest.raises(InvalidEvent):
            await publisher.publish_many(
                [complete_event(), ExamEventMessage(test_id="T1", status="Ready", oid=None)]  # type: ignore[arg-type]
            )
        await publisher.publish(ExamEventMessage(test_id="T9", status="Ready"))

    assert await record_count(topic) == 1
    [record] = await read_records(topic, 1)
    assert record.key == b"T9"


async def test_cli_publish_lands_the_event_described_by_its_flags(new_topic):
    topic = await new_topic(partitions=3)
    code, out, err = await run_cli(
        "publish", "--topic", topic,
        "--test-id", "50613490BP", "--status", "Complete", "--previous-status", "Review",
        "--tracking-code", "ACME-UNI", "--oid", "crm-000042", "--duration-minutes", "87",
        "--finished-on", "2026-11-24", "--occurred-at", "2026-11-25T16:02:11Z",
        "--score-report-url", "https://results.example.org/r/1?sig=a+b&x=1",
        "--overall-level", "4.3", "--overall-cefr", "B2",
        "--section", "writing:level=3,score=62,percent=62,cefr=B1,question_count=2",
    )  # fmt: skip
    assert code == 0, err
    first, summary = out.splitlines()
    match = PUBLISHED_LINE.match(first)
    assert match is not None, out
    assert summary == f"published 1 event(s) to {topic}"

    [record] = await read_records(topic, 1)
    event = parse_event(record.value, record.key)
    assert (match["event_id"], match["test_id"]) == (event.event_id, "50613490BP")
    assert (int(match["partition"]), int(match["offset"])) == (record.partition, record.offset)
    assert event.status is Status.COMPLETE
    assert event.occurred_at_text == "2026-11-25T16:02:11Z"
    assert event.results is not None
    assert event.results.score_report_url == "https://results.example.org/r/1?sig=a+b&x=1"
    assert event.results.sections["writing"].question_count == 2


async def test_cli_publish_with_an_invalid_event_exits_2_and_publishes_nothing(new_topic):
    topic = await new_topic()
    code, out, err = await run_cli(
        "publish", "--topic", topic, "--test-id", "T1", "--status", "Finished",
        "--event-type", "reset",
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "itep-events: invalid event: reset_type: must be a non-empty string when event_type "
        "is reset"
    ]
    assert await record_count(topic) == 0


async def test_cli_publish_file_with_an_invalid_line_exits_2_and_publishes_nothing(
    new_topic, tmp_path
):
    topic = await new_topic()
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"test_id": "T1", "status": "Ready", "duration_minutes": 0}\n'
        '{"test_id": "T1", "status": "Incomplete", "previous_status": "Ready", '
        '"duration_minutes": 12}\n'
        '{"test_id": "T1", "status": "Finished", "previous_status": "Incomplete", '
        '"duration_minutes": "ninety"}\n'
    )
    code, out, err = await run_cli("publish", "--topic", topic, "--file", str(path))
    assert code == 2
    assert out == ""
    assert f"{path}: line 3: duration_minutes: must be an integer >= 0" in err
    assert await record_count(topic) == 0


async def test_cli_publish_file_from_stdin_publishes_every_line_in_order(new_topic):
    topic = await new_topic()
    lines = b"".join(
        b'{"test_id": "T1", "status": "%s", "duration_minutes": %d}\n' % (status.encode(), n)
        for n, status in enumerate(["Ready", "Incomplete", "Finished"])
    )
    code, out, err = await run_cli("publish", "--topic", topic, "--file", "-", stdin=lines)
    assert code == 0, err
    assert out.splitlines()[-1] == f"published 3 event(s) to {topic}"

    records = await read_records(topic, 3)
    events = [parse_event(r.value, r.key) for r in records]
    assert [e.status for e in events] == [Status.READY, Status.INCOMPLETE, Status.FINISHED]
    assert [m["event_id"] for m in map(PUBLISHED_LINE.match, out.splitlines()[:3]) if m] == [
        e.event_id for e in events
    ]


async def test_cli_publish_skip_invalid_publishes_only_the_valid_lines(new_topic):
    topic = await new_topic()
    lines = (
        b'{"test_id": "T1", "status": "Ready", "duration_minutes": 0}\n'
        b'{"test_id": "T2", "status": "Sleeping", "duration_minutes": 0}\n'
        b'{"test_id": "T3", "status": "Ready", "duration_minutes": 0}\n'
    )
    code, out, err = await run_cli(
        "publish", "--topic", topic, "--file", "-", "--skip-invalid", stdin=lines
    )
    assert code == 0, err
    assert "stdin: line 2: status:" in err
    assert out.splitlines()[-1] == f"published 2 event(s) to {topic}, skipped 1 invalid line(s)"
    assert sorted(r.key for r in await read_records(topic, 2)) == [b"T1", b"T3"]


async def test_cli_loadgen_lands_count_valid_events_with_each_tests_lifecycle_in_order(
    new_topic,
):
    topic = await new_topic(partitions=3)
    code, out, err = await run_cli(
        "loadgen", "--topic", topic, "--count", "50", "--tests", "8", "--seed", "11",
        "--tracking-code", "ACME-UNI", "OTHER",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[-1].startswith("loadgen published=50 tests=8 ")

    records = await read_records(topic, 50)
    assert len(records) == 50
    assert await record_count(topic, partitions=3) == 50
    last_status: dict[str, Status] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = parse_event(record.value, record.key)
        assert event.tracking_code in {"ACME-UNI", "OTHER"}
        assert event.previous_status == last_status.get(event.test_id)
        if event.event_type is EventType.STATUS_CHANGED and event.previous_status is None:
            assert event.status is Status.READY
        last_status[event.test_id] = event.status
    assert len(last_status) == 8
