"""The service's connection pools: returned as they are, never with a transaction open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from consumer.postgres import create_pool

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=1, connect_timeout=5)
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_released_connection_is_not_sent_a_reset_query(pool: asyncpg.Pool) -> None:
    sent: list[str] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
        await conn.fetchval("SELECT 1")
    async with pool.acquire() as conn:  # the same connection: the pool holds one
        await conn.fetchval("SELECT 2")
    assert sent == ["SELECT 1", "SELECT 2"]


async def test_a_transaction_left_open_is_rolled_back_before_the_next_use(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TEMP TABLE left_open (id int)")
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        exists = await conn.fetchval("SELECT to_regclass('pg_temp.left_open') IS NOT NULL")
    assert exists is False
