"""Fixtures shared by every test.

Integration fixtures talk to the local stack (``make up``): Kafka on
``KAFKA_BOOTSTRAP_SERVERS`` and Postgres on ``DATABASE_URL``. Each test gets fresh topics
(``test-<uuid>``) and a fresh, migrated database that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.admin.migrate import apply_migrations
from tests.receiver import Receiver

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/itep_webhooks")

TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def kafka_bootstrap() -> str:
    return KAFKA


@pytest.fixture
async def new_topic() -> AsyncIterator[TopicFactory]:
    """Create topics named ``test-<uuid>`` (``partitions`` as asked); deleted after the test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    created: list[str] = []

    async def make(partitions: int = 1, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(_with_database(DATABASE_URL, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(DATABASE_URL, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(empty_database_url: str) -> str:
    """A fresh database with every migration of ``sql/`` applied."""
    await apply_migrations(empty_database_url)
    return empty_database_url


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An HTTP receiver on 127.0.0.1 that records what it gets and answers 200."""
    server = await Receiver().start()
    try:
        yield server
    finally:
        await server.stop()
