"""How the batching publisher tells each record of a batch its fate, over a stand-in for
aiokafka's batch API (the real broker: tests/integration/test_publisher.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError

from consumer.partitioner import KeyPartitioner
from consumer.publisher import OutcomePublisher
from tests.factories import outcome_record


class Batch:
    def __init__(self) -> None:
        self.keys: list[bytes | None] = []

    def append(self, *, timestamp: None, key: bytes | None, value: bytes) -> object:
        self.keys.append(key)
        return object()

    def close(self) -> None:
        pass


class BatchProducer:
    """Acknowledges or fails each batch as ``answers`` says, in order."""

    def __init__(self, answers: list[BaseException | None], partitions: int = 1) -> None:
        self.answers = answers
        self.batches: list[Batch] = []
        self.handed_at: dict[int, float] = {}  # partition -> loop time of its last batch
        self.client = SimpleNamespace(
            cluster=SimpleNamespace(partitions_for_topic=lambda topic: set(range(partitions)))
        )

    def create_batch(self) -> Batch:
        return Batch()

    async def stop(self) -> None:
        pass

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        self.batches.append(batch)
        self.handed_at[partition] = asyncio.get_running_loop().time()
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        answer = self.answers.pop(0)
        if answer is None:
            acked.set_result(None)
        else:
            acked.set_exception(answer)
        return acked


def publisher_over(producer: BatchProducer, linger_ms: int = 0) -> OutcomePublisher:
    return OutcomePublisher(
        "127.0.0.1:1",
        "outcomes",
        "dlq",
        linger_ms=linger_ms,
        producer=producer,
    )


async def test_every_record_of_a_failed_batch_gets_its_own_copy_of_the_error() -> None:
    producer = BatchProducer([KafkaTimeoutError("no ack")])
    publisher = publisher_over(producer)
    results = await asyncio.gather(
        *(publisher.publish(outcome_record(test_id=f"T{n}")) for n in range(3)),
        return_exceptions=True,
    )
    assert [batch.keys for batch in producer.batches] == [[b"T0", b"T1", b"T2"]]
    assert all(isinstance(result, KafkaTimeoutError) for result in results)
    assert len({id(result) for result in results}) == 3


async def test_records_arriving_while_a_batch_is_sent_make_the_next_batch() -> None:
    producer = BatchProducer([None, None])
    publisher = publisher_over(producer)
    first = asyncio.ensure_future(publisher.publish(outcome_record(test_id="T0")))
    await asyncio.sleep(0)  # the lane's task has taken T0
    rest = [publisher.publish(outcome_record(test_id=f"T{n}")) for n in (1, 2)]
    await asyncio.gather(first, *rest)
    assert [batch.keys for batch in producer.batches] == [[b"T0"], [b"T1", b"T2"]]


async def test_a_publish_waits_for_its_batchs_acknowledgement() -> None:
    producer = BatchProducer([None])
    publisher = publisher_over(producer)
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send_batch(batch: Batch, topic: str, *, partition: int) -> Any:
        producer.batches.append(batch)
        return acked

    producer.send_batch = send_batch  # type: ignore[method-assign]
    publish = asyncio.ensure_future(publisher.publish(outcome_record()))
    await asyncio.sleep(0.01)
    assert not publish.done()
    acked.set_result(None)
    await asyncio.wait_for(publish, 1)


async def test_lanes_started_within_one_linger_window_hand_their_batches_over_together() -> None:
    producer = BatchProducer([None, None], partitions=6)
    publisher = publisher_over(producer, linger_ms=100)
    partition_of = KeyPartitioner()
    first = "T0"
    second = next(
        test_id
        for test_id in (f"T{n}" for n in range(1, 100))
        if partition_of(test_id.encode(), 6) != partition_of(first.encode(), 6)
    )
    loop = asyncio.get_running_loop()
    opened = loop.time()
    early = asyncio.ensure_future(publisher.publish(outcome_record(test_id=first)))
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(publisher.publish(outcome_record(test_id=second)))
    await asyncio.sleep(0.02)
    assert producer.batches == []  # the window is still open
    await asyncio.wait_for(asyncio.gather(early, late), 1)
    handed = sorted(producer.handed_at.values())
    assert len(handed) == 2
    assert handed[0] >= opened + 0.1
    assert handed[1] - handed[0] < 0.01  # the later lane did not wait a window of its own


async def test_a_publish_waiting_in_the_window_fails_when_the_publisher_closes() -> None:
    producer = BatchProducer([], partitions=6)
    publisher = publisher_over(producer, linger_ms=1000)
    waiting = asyncio.ensure_future(publisher.publish(outcome_record(test_id="T0")))
    await asyncio.sleep(0.01)
    await publisher.close()
    with pytest.raises(KafkaError, match="stopped"):
        await asyncio.wait_for(waiting, 1)
    assert producer.batches == []
