"""The local stack answers: a record makes the trip through the real broker, topics are made."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from consumer.topics import ensure_topics

pytestmark = pytest.mark.integration

STACK_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "stack.sh"


async def test_a_record_is_produced_consumed_and_committed(
    kafka_bootstrap: str, new_topic: Any
) -> None:
    """aiokafka against the real broker: produce, consume in a group, commit."""
    topic = await new_topic(partitions=3)
    group = f"test-group-{uuid.uuid4().hex}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"T1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while not records:
            batch = await consumer.getmany(timeout_ms=500)
            records = [r for rs in batch.values() for r in rs]
        [record] = records
        assert (record.key, record.value, record.partition) == (b"T1", b"hello", sent.partition)
        tp = next(iter(batch))
        await consumer.commit({tp: record.offset + 1})
        assert await consumer.committed(tp) == record.offset + 1
    finally:
        await consumer.stop()


async def test_ensure_topics_creates_what_is_missing_once(kafka_bootstrap: str) -> None:
    """Missing topics are created with the asked partitions; a second call creates none."""
    names = [f"test-ensure-{uuid.uuid4().hex}" for _ in range(2)]
    try:
        assert sorted(await ensure_topics(kafka_bootstrap, names, 4, 1)) == sorted(names)
        assert await ensure_topics(kafka_bootstrap, names, 4, 1) == []
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        assert {d["topic"]: len(d["partitions"]) for d in described} == dict.fromkeys(names, 4)
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        await admin.delete_topics(names)
        await admin.close()


async def test_stack_up_again_is_harmless(kafka_bootstrap: str) -> None:
    """`make up` while everything runs changes nothing: exit 0, same broker still answers."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(STACK_SCRIPT),
        "up",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    assert b"starting" not in output, output.decode()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert (await admin.describe_cluster())["brokers"]
    finally:
        await admin.close()
