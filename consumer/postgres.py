"""The service's connection pools, and what an unreachable Postgres looks like to asyncpg."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

# A refused or dropped connection, a timeout, a server error (shutting down, too many
# connections, the table not migrated yet). InternalClientError covers asyncpg's
# ProtocolError, seen when a server goes away mid-reply.
UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def keep_session(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is.

    Before calling this, the pool rolls back a transaction left open and drops listeners.
    asyncpg's default reset then also sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL;``: a second round trip per use, which costs Postgres more CPU
    than a one-row query does (BENCHMARKS.md). The service's pooled
    connections take no advisory locks, open no cursors, listen to nothing and change no
    settings, so there is nothing for it to undo.
    """


async def create_pool(
    dsn: str,
    *,
    max_size: int,
    connect_timeout: float,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """A pool that opens connections on first use and returns them unreset."""
    options: dict[str, Any] = {"init": init} if init is not None else {}
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=0, max_size=max_size, timeout=connect_timeout, reset=keep_session, **options
    )
    return pool
