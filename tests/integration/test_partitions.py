"""Partitions added to the events topic while the service runs (docs/operations.md, "Adding
partitions to exam-events"): the service sees them at its next metadata refresh
(KAFKA_METADATA_MAX_AGE), the group rebalances, and what was published to them is delivered,
from their first record on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from structlog.testing import capture_logs

from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    TopicReader,
    add_tracking_code,
    by_event,
    final_for,
    publish,
    running_service,
)
from tests.receiver import Receiver

pytestmark = pytest.mark.integration


async def publish_to(bootstrap: str, topic: str, placed: list[tuple[int, dict[str, Any]]]) -> None:
    """Publish each event to the partition given with it, keyed by its test id."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for partition, event in placed:
            await producer.send(
                topic,
                value=orjson.dumps(event),
                key=str(event["test_id"]).encode(),
                partition=partition,
            )
        await producer.flush()
    finally:
        await producer.stop()


async def test_partitions_added_while_running_are_consumed_from_their_first_record(
    kafka_bootstrap: str, new_topic: Any, database_url: str, receiver: Receiver
) -> None:
    """One partition at start; two more added while the service runs, and events written to
    them at once (before the service can know of them). With KAFKA_METADATA_MAX_AGE=1s the
    group is rebalanced onto three partitions within seconds and every event is delivered
    once; the partition consumed before keeps going."""
    stack = Stack(
        bootstrap=kafka_bootstrap,
        database_url=database_url,
        events_topic=await new_topic(partitions=1, prefix="test-events"),
        outcomes_topic=await new_topic(partitions=1, prefix="test-outcomes"),
        dlq_topic=await new_topic(partitions=1, prefix="test-dlq"),
    )
    await add_tracking_code(database_url, "GROW", receiver.url)
    first = event_dict(test_id="GROW-A", tracking_code="GROW")
    await publish(kafka_bootstrap, stack.events_topic, [first])
    later = [
        (1, event_dict(test_id="GROW-B", tracking_code="GROW")),
        (2, event_dict(test_id="GROW-C", tracking_code="GROW")),
        (0, event_dict(test_id="GROW-A", tracking_code="GROW", status="Invalidated")),
    ]
    with capture_logs() as logs:
        async with (
            running_service(stack.settings(KAFKA_METADATA_MAX_AGE="1s")),
            TopicReader(kafka_bootstrap, stack.outcomes_topic) as outcomes,
        ):
            await outcomes.until(final_for({first["event_id"]}))
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.create_partitions({stack.events_topic: NewPartitions(total_count=3)})
            finally:
                await admin.close()
            added_at = time.monotonic()
            await publish_to(kafka_bootstrap, stack.events_topic, later)
            await outcomes.until(final_for({e["event_id"] for _, e in later}), timeout=20)
            delivered_after = time.monotonic() - added_at
            # Nothing more comes: each event was delivered once.
            await asyncio.sleep(0.5)
    grouped = by_event(outcomes.values())
    for event in [first, *(e for _, e in later)]:
        assert [o["outcome"] for o in grouped[event["event_id"]]] == ["delivered"], event
    assert len(receiver.requests) == 4
    assignments = [e["partitions"] for e in logs if e["event"] == "partitions_assigned"]
    assert len(assignments[-1]) == 3, assignments
    assert delivered_after < 15, delivered_after
