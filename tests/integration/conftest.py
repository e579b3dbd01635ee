"""Fixtures of the integration tests: private topics, group and database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from consumer.tracking_store import init_connection
from tests.integration.harness import Stack


@pytest.fixture
async def stack(kafka_bootstrap: str, new_topic: Any, database_url: str) -> Stack:
    return Stack(
        bootstrap=kafka_bootstrap,
        database_url=database_url,
        events_topic=await new_topic(partitions=3, prefix="test-events"),
        outcomes_topic=await new_topic(partitions=3, prefix="test-outcomes"),
        dlq_topic=await new_topic(partitions=1, prefix="test-dlq"),
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's migrated database, jsonb decoded as the store does."""
    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    try:
        yield conn
    finally:
        await conn.close()
