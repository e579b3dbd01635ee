"""Look at the local three-node cluster of `make cluster-up` (scripts/cluster.sh) from a client.

    python scripts/cluster_tools.py brokers                  # registered brokers
    python scripts/cluster_tools.py leaders TOPIC [--json]   # leader, replicas, ISR per partition
    python scripts/cluster_tools.py wait-in-sync TOPIC [--timeout 60]

Node N of scripts/cluster.sh is broker id N on 127.0.0.1:1909(N+1): the leader printed here
is the N to give `scripts/cluster.sh kill|stop|start N`. The fault drills import the
functions (``partition_leaders``, ``describe_partitions``, ``wait_in_sync``) as they are.
Exit status: 0 done, 1 the cluster does not answer, the topic is unknown or a wait timed out,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

CLUSTER_BOOTSTRAP = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
UNKNOWN_TOPIC = 3
LEADER_NOT_AVAILABLE = 5


@dataclass(frozen=True)
class PartitionState:
    partition: int
    leader: int  # -1 while the partition has no leader
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def in_sync(self) -> bool:
        return self.leader >= 0 and set(self.isr) == set(self.replicas)


class ClusterToolError(Exception):
    pass


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="cluster-tools", request_timeout_ms=10000
    )
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise ClusterToolError(f"the cluster at {bootstrap} does not answer: {exc}") from None
    return admin


async def brokers(bootstrap: str = CLUSTER_BOOTSTRAP) -> dict[str, Any]:
    """The cluster's metadata: ``brokers`` (registered and unfenced: id, host, port),
    ``cluster_id``, ``controller_id`` (under KRaft, a broker the client may send controller
    requests to, not the active controller)."""
    admin = await _admin(bootstrap)
    try:
        return await admin.describe_cluster()
    finally:
        await admin.close()


async def describe_partitions(
    topic: str, bootstrap: str = CLUSTER_BOOTSTRAP
) -> list[PartitionState]:
    """Leader, replicas and in-sync replicas of every partition of ``topic``, by partition."""
    admin = await _admin(bootstrap)
    try:
        # Not admin.describe_topics: its metadata request lets a broker with
        # auto.create.topics.enable create the topic it is asked about.
        response = await admin._send_request(
            MetadataRequest([topic], allow_auto_topic_creation=False)
        )
    finally:
        await admin.close()
    [described] = response.to_object()["topics"]
    if described["error_code"] == UNKNOWN_TOPIC:
        raise ClusterToolError(f"no topic {topic} on the cluster at {bootstrap}")
    if described["error_code"] not in (0, LEADER_NOT_AVAILABLE):
        raise ClusterToolError(f"topic {topic}: error code {described['error_code']}")
    return sorted(
        (
            PartitionState(
                partition=p["partition"],
                leader=p["leader"],
                replicas=tuple(p["replicas"]),
                isr=tuple(p["isr"]),
            )
            for p in described["partitions"]
        ),
        key=lambda state: state.partition,
    )


async def partition_leaders(topic: str, bootstrap: str = CLUSTER_BOOTSTRAP) -> dict[int, int]:
    """partition -> the broker id (= cluster.sh node) leading it (-1: none right now)."""
    return {p.partition: p.leader for p in await describe_partitions(topic, bootstrap)}


async def wait_in_sync(
    topic: str, within: float = 60.0, bootstrap: str = CLUSTER_BOOTSTRAP
) -> list[PartitionState]:
    """Wait until every partition of ``topic`` has a leader and all its replicas in sync
    (after a broker came back, say); raise ``ClusterToolError`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            states = await describe_partitions(topic, bootstrap)
        except ClusterToolError:
            states = []
        if states and all(p.in_sync for p in states):
            return states
        if loop.time() >= deadline:
            lagging = [p.partition for p in states if not p.in_sync]
            raise ClusterToolError(
                f"{topic}: partitions {lagging or 'unknown'} not in sync after {within:g}s"
            )
        await asyncio.sleep(0.5)


def _print_states(states: Sequence[PartitionState], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{**asdict(p), "in_sync": p.in_sync} for p in states]))
        return
    print(f"{'partition':>9}  {'leader':>6}  {'replicas':<10} isr")
    for p in states:
        replicas = ",".join(map(str, p.replicas))
        isr = ",".join(map(str, p.isr))
        print(f"{p.partition:>9}  {p.leader:>6}  {replicas:<10} {isr}")


async def _main(args: argparse.Namespace) -> int:
    if args.command == "brokers":
        described = await brokers(args.bootstrap)
        for broker in sorted(described["brokers"], key=lambda b: b["node_id"]):
            print(f"{broker['node_id']}  {broker['host']}:{broker['port']}")
        return 0
    if args.command == "leaders":
        _print_states(await describe_partitions(args.topic, args.bootstrap), args.json)
        return 0
    _print_states(await wait_in_sync(args.topic, args.timeout, args.bootstrap), False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cluster_tools.py", description="The local 3-node Kafka cluster, seen by a client."
    )
    parser.add_argument(
        "--bootstrap", default=CLUSTER_BOOTSTRAP, help=f"default {CLUSTER_BOOTSTRAP}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("brokers", help="registered brokers: id and address")
    leaders = commands.add_parser("leaders", help="leader, replicas and ISR per partition")
    leaders.add_argument("topic")
    leaders.add_argument("--json", action="store_true", help="one JSON array")
    wait = commands.add_parser(
        "wait-in-sync", help="wait until every partition has a leader and a full ISR"
    )
    wait.add_argument("topic")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except ClusterToolError as exc:
        print(f"cluster_tools: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
