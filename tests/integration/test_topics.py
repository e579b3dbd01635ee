"""Topics at start-up against the one-node stack: the replication factor is checked against
the cluster, min.insync.replicas is set on each topic created, thin topics are reported."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from structlog.testing import capture_logs

from consumer.errors import ConfigError
from consumer.topics import ensure_topics
from tests.integration.harness import replication_factors, topic_configs

pytestmark = pytest.mark.integration


async def broker_count(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_more_replicas_than_brokers_is_a_bad_setting_and_creates_nothing(
    kafka_bootstrap: str,
) -> None:
    """TOPIC_REPLICATION_FACTOR above the broker count: ConfigError naming it, the cluster's
    address and its broker count; not one of the topics is created."""
    brokers = await broker_count(kafka_bootstrap)
    names = [f"test-rf-{uuid.uuid4().hex}" for _ in range(2)]
    with pytest.raises(ConfigError) as info:
        await ensure_topics(kafka_bootstrap, names, 1, brokers + 1)
    assert info.value.name == "TOPIC_REPLICATION_FACTOR"
    noun = "broker" if brokers == 1 else "brokers"
    assert f"the cluster at {kafka_bootstrap} has {brokers} {noun}" in str(info.value)
    assert not set(names) & await topic_names(kafka_bootstrap)


async def test_created_topics_carry_min_insync_replicas_beside_their_own_configs(
    kafka_bootstrap: str,
) -> None:
    """Each topic created gets min.insync.replicas = min(2, factor) as its own setting; one
    with a configuration of its own keeps it too."""
    plain, sized = (f"test-configs-{uuid.uuid4().hex}" for _ in range(2))
    try:
        created = await ensure_topics(
            kafka_bootstrap, [plain, sized], 2, 1, {sized: {"max.message.bytes": "2097152"}}
        )
        assert sorted(created) == sorted([plain, sized])
        plain_configs = await topic_configs(kafka_bootstrap, plain)
        sized_configs = await topic_configs(kafka_bootstrap, sized)
        assert plain_configs["min.insync.replicas"] == ("1", True)
        assert sized_configs["min.insync.replicas"] == ("1", True)
        assert sized_configs["max.message.bytes"] == ("2097152", True)
        assert plain_configs["max.message.bytes"][1] is False
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        await admin.delete_topics([plain, sized])
        await admin.close()


async def test_an_existing_topic_with_fewer_replicas_is_reported_and_left_alone(
    kafka_bootstrap: str, new_topic: Any
) -> None:
    """A topic already there with fewer replicas than asked is used as it is (no broker
    count check: nothing is created) and logged once as topic_replication_factor_low."""
    topic = await new_topic(partitions=2)
    with capture_logs() as logs:
        assert await ensure_topics(kafka_bootstrap, [topic], 2, 3) == []
    [warning] = [e for e in logs if e["event"] == "topic_replication_factor_low"]
    assert warning["log_level"] == "warning"
    assert (warning["topic"], warning["replication_factor"], warning["wanted"]) == (topic, 1, 3)
    assert await replication_factors(kafka_bootstrap, topic) == {1}
