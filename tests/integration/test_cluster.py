"""The service on the local three-broker cluster of `make cluster-up` (scripts/cluster.sh).

Skipped, with the reason, when that cluster is not up: `make test` does not need it. Postgres
comes from `make up` as for every integration test. ITEP_CLUSTER_BOOTSTRAP overrides the
cluster's address (default the three local brokers).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from consumer.publisher import MAX_RECORD_BYTES
from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    TopicReader,
    add_tracking_code,
    final_for,
    publish,
    replication_factors,
    running_service,
    topic_configs,
)
from tests.receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get(
    "ITEP_CLUSTER_BOOTSTRAP", "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
)
BROKERS = 3


def _any_port_open(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            continue
    return False


@pytest.fixture
async def cluster() -> str:
    """The cluster's bootstrap servers; skips the test unless three brokers are registered."""
    if not _any_port_open(CLUSTER):
        pytest.skip(f"the local 3-broker cluster is not up ({CLUSTER}): run make cluster-up")
    admin = AIOKafkaAdminClient(bootstrap_servers=CLUSTER, request_timeout_ms=10000)
    try:
        await admin.start()
        brokers = len((await admin.describe_cluster())["brokers"])
    except KafkaError as exc:
        pytest.skip(f"the cluster at {CLUSTER} does not answer ({exc}): run make cluster-up")
    finally:
        await admin.close()
    if brokers < BROKERS:
        pytest.skip(f"the cluster at {CLUSTER} lists {brokers} brokers, not {BROKERS}")
    return CLUSTER


@pytest.fixture
async def cluster_admin(cluster: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def test_every_broker_holds_the_settings_the_guarantees_lean_on(
    cluster_admin: AIOKafkaAdminClient,
) -> None:
    """Three copies of each partition, acks=all meaning two of them, no unclean leader,
    committed offsets and transaction state on three brokers."""
    wanted = {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
    }
    brokers = (await cluster_admin.describe_cluster())["brokers"]
    assert sorted(b["node_id"] for b in brokers) == [1, 2, 3]
    responses = await cluster_admin.describe_configs(
        [
            ConfigResource(ConfigResourceType.BROKER, str(b["node_id"]), dict.fromkeys(wanted))
            for b in brokers
        ]
    )
    for response in responses:
        for resource in response.to_object()["resources"]:
            values = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            assert values == wanted, resource["resource_name"]


async def test_the_service_creates_replicated_topics_and_delivers_on_the_cluster(
    cluster: str, cluster_admin: AIOKafkaAdminClient, database_url: str, receiver: Receiver
) -> None:
    """Bootstrapped with all three brokers and TOPIC_REPLICATION_FACTOR=3, the service creates
    its topics with three replicas and min.insync.replicas 2 (the dead-letter topic keeps its
    16 MiB limit beside it), and an event makes the whole trip."""
    suffix = uuid.uuid4().hex
    stack = Stack(
        bootstrap=cluster,
        database_url=database_url,
        events_topic=f"test-cluster-events-{suffix}",
        outcomes_topic=f"test-cluster-outcomes-{suffix}",
        dlq_topic=f"test-cluster-dlq-{suffix}",
    )
    topics = [stack.events_topic, stack.outcomes_topic, stack.dlq_topic]
    await add_tracking_code(database_url, "RF3", receiver.url)
    event = event_dict(test_id="RF3-1", tracking_code="RF3")
    try:
        settings = stack.settings(TOPIC_REPLICATION_FACTOR="3", TOPIC_PARTITIONS="3")
        async with running_service(settings):
            # Publishing or reading first would have a broker auto-create the topics.
            async with asyncio.timeout(30):
                while not set(topics) <= set(await cluster_admin.list_topics()):
                    await asyncio.sleep(0.1)
            await publish(cluster, stack.events_topic, [event])
            async with TopicReader(cluster, stack.outcomes_topic) as outcomes:
                await outcomes.until(final_for({event["event_id"]}))
        assert [doc["outcome"] for doc in outcomes.values()] == ["delivered"]
        assert orjson.loads(receiver.requests[0].data)["TestID"] == "RF3-1"
        for topic in topics:
            assert await replication_factors(cluster, topic) == {3}, topic
            assert (await topic_configs(cluster, topic))["min.insync.replicas"] == ("2", True)
        dlq = await topic_configs(cluster, stack.dlq_topic)
        assert dlq["max.message.bytes"] == (str(MAX_RECORD_BYTES), True)
    finally:
        await cluster_admin.delete_topics(topics)


async def test_cluster_tools_names_the_leader_of_each_partition(
    cluster: str, cluster_admin: AIOKafkaAdminClient
) -> None:
    """`scripts/cluster_tools.py leaders TOPIC --json`: one row per partition, its leader
    (the N of scripts/cluster.sh kill|stop|start N) among three in-sync replicas."""
    topic = f"test-cluster-leaders-{uuid.uuid4().hex}"
    await cluster_admin.create_topics([NewTopic(topic, 3, 3)])
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "scripts" / "cluster_tools.py"),
            "--bootstrap",
            cluster,
            "leaders",
            topic,
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        rows = orjson.loads(out)
        assert [row["partition"] for row in rows] == [0, 1, 2]
        for row in rows:
            assert sorted(row["replicas"]) == [1, 2, 3]
            assert row["leader"] in row["replicas"]
        # Fresh partitions may still be catching up: the rows only promise a leader.
        assert {row["leader"] for row in rows} <= {1, 2, 3}
    finally:
        await cluster_admin.delete_topics([topic])
