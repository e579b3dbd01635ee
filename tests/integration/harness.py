"""Run the real service against the local stack with fresh topics, group and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.service import run_service
from consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / ".local" / "test-logs"


@dataclass
class Stack:
    """Names of one test's private topics, consumer group and database."""

    bootstrap: str
    database_url: str
    events_topic: str
    outcomes_topic: str
    dlq_topic: str
    group: str = field(default_factory=lambda: f"test-group-{uuid.uuid4().hex}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": self.database_url,
            "EXAM_EVENTS_TOPIC": self.events_topic,
            "OUTCOMES_TOPIC": self.outcomes_topic,
            "DEAD_LETTER_TOPIC": self.dlq_topic,
            "CONSUMER_GROUP": self.group,
            "HTTP_PORT": "0",
            "ALLOW_PRIVATE_ENDPOINTS": "true",
            "RETRY_SCHEDULE": "100ms,200ms",
            "SCHEDULE_POLL_INTERVAL": "100ms",
            "SCHEDULE_LEASE": "3s",
            "COMMIT_INTERVAL": "200ms",
            "LOG_FORMAT": "console",
            "LOG_LEVEL": "warning",
        }
        env.update(extra)
        return env

    def settings(self, **extra: str) -> Settings:
        return Settings.from_env(self.env(**extra))


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """The service in this process; stopped the SIGTERM way (drain, commit) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(settings, stop, handle_signals=False))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """``python -m consumer run`` as a child process, its log in ``.local/test-logs/``."""

    process: asyncio.subprocess.Process
    port: int

    @classmethod
    async def start(cls, stack: Stack, **extra: str) -> ServiceProcess:
        port = free_port()
        env = {**os.environ, **stack.env(HTTP_PORT=str(port), **extra)}
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with (LOG_DIR / f"{stack.group}.log").open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumer",
                "run",
                env=env,
                cwd=ROOT,
                stdout=log_file,
                stderr=log_file,
            )
        return cls(process, port)

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                assert self.process.returncode is None, "the service exited early"
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)


async def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition (of its one topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


async def publish(bootstrap: str, topic: str, events: list[Mapping[str, Any] | bytes]) -> None:
    """Publish event dicts (keyed by test_id) or raw bytes (no key), in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            if isinstance(event, bytes):
                await producer.send(topic, value=event)
            else:
                await producer.send(
                    topic, value=orjson.dumps(event), key=str(event["test_id"]).encode()
                )
        await producer.flush()
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning, accumulating its records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def until(self, done: Callable[[list[Any]], bool], timeout: float = 30.0) -> list[Any]:
        """Read until ``done(records)``; fail with what was read on timeout."""
        async with asyncio.timeout(timeout):
            while not done(self.records):
                batch = await self._consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    self.records.extend(records)
        return self.records

    async def read_for(self, seconds: float) -> list[Any]:
        """Read whatever arrives during ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            batch = await self._consumer.getmany(timeout_ms=max(1, int(left * 1000)))
            for records in batch.values():
                self.records.extend(records)
        return self.records

    def values(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records]


async def add_tracking_code(
    database_url: str, code: str, endpoint_url: str, **columns: Any
) -> None:
    """Insert a tracking-code row; jsonb columns take dicts."""
    values = {"code": code, "endpoint_url": endpoint_url, **columns}
    for name in ("auth_params", "extra_fields"):
        if name in values:
            values[name] = orjson.dumps(values[name]).decode()
    names = ", ".join(values)
    params = ", ".join(
        f"${i}::jsonb" if n in ("auth_params", "extra_fields") else f"${i}"
        for i, n in enumerate(values, start=1)
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"INSERT INTO tracking_codes ({names}) VALUES ({params})",  # noqa: S608 - test names
            *values.values(),
        )
    finally:
        await conn.close()


def final_for(event_ids: set[str]) -> Any:
    """A reader predicate: every event id has a final outcome."""

    def done(records: list[Any]) -> bool:
        finals = {
            doc["event_id"]
            for doc in (orjson.loads(r.value) for r in records)
            if doc["outcome"] != "retry_scheduled"
        }
        return event_ids <= finals

    return done


def by_event(outcomes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in outcomes:
        grouped[doc["event_id"]].append(doc)
    return grouped


TOPIC_CONFIG_SOURCE = 1  # DescribeConfigs: the value is set on the topic itself


async def topic_configs(bootstrap: str, topic: str) -> dict[str, tuple[str, bool]]:
    """The topic's configuration: name -> (value, whether it is set on the topic itself
    rather than inherited from the broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.to_object()["resources"]
    return {
        entry["config_names"]: (
            entry["config_value"],
            entry["config_source"] == TOPIC_CONFIG_SOURCE,
        )
        for entry in resource["config_entries"]
    }


async def replication_factors(bootstrap: str, topic: str) -> set[int]:
    """The replica counts of the topic's partitions (one value when they all agree)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {len(p["replicas"]) for p in described["partitions"]}
