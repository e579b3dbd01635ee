"""Outcomes through the batching publisher, against the real broker."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from consumer.publisher import OutcomePublisher
from tests.conftest import KAFKA, TopicFactory
from tests.factories import outcome_record

pytestmark = pytest.mark.integration


async def read_all(topic: str, count: int) -> list[tuple[int, bytes, dict[str, object]]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest")
    await consumer.start()
    seen: list[tuple[int, bytes, dict[str, object]]] = []
    try:
        async with asyncio.timeout(20):
            while len(seen) < count:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    seen += [(tp.partition, r.key, orjson.loads(r.value)) for r in records]
    finally:
        await consumer.stop()
    return seen


async def test_concurrent_outcomes_land_where_the_default_partitioner_puts_their_key_in_order(
    new_topic: TopicFactory,
) -> None:
    topic = await new_topic(partitions=4)
    publisher = OutcomePublisher(KAFKA, topic, "unused-dlq")

    async def one_test(test_id: str) -> None:
        for attempt in range(1, 11):
            await publisher.publish(outcome_record(test_id=test_id, attempt=attempt))

    async with publisher:
        await asyncio.gather(*(one_test(f"T{number}") for number in range(40)))
    seen = await read_all(topic, 400)
    assert len(seen) == 400
    by_key: dict[bytes, list[int]] = {}
    for partition, key, value in seen:
        assert partition == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])
        by_key.setdefault(key, []).append(int(value["attempt"]))  # type: ignore[call-overload]
    assert by_key == {f"T{number}".encode(): list(range(1, 11)) for number in range(40)}


async def test_a_publish_returns_once_its_record_is_on_the_broker(
    new_topic: TopicFactory,
) -> None:
    topic = await new_topic(partitions=2)
    async with OutcomePublisher(KAFKA, topic, "unused-dlq") as publisher:
        await publisher.publish(outcome_record(test_id="T"))
        seen = await read_all(topic, 1)
    assert [(key, value["test_id"]) for _, key, value in seen] == [(b"T", "T")]


async def test_a_record_without_a_test_id_is_published_without_a_key(
    new_topic: TopicFactory,
) -> None:
    topic = await new_topic(partitions=3)
    async with OutcomePublisher(KAFKA, topic, "unused-dlq") as publisher:
        await asyncio.gather(*(publisher.publish(outcome_record(test_id=None)) for _ in range(6)))
    seen = await read_all(topic, 6)
    assert [key for _, key, _ in seen] == [None] * 6
