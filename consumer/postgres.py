"""The service's connection pools, and what an unreachable Postgres looks like to asyncpg."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
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
    than a one-row query does (BENCHMARKS.md, ninth round). The service's pooled connections
    take no advisory locks, open no cursors, listen to nothing and keep no setting past a
    transaction (the claim's ``SET LOCAL`` ends with its own), so there is nothing to undo.
    """


async def create_pool(
    dsn: str,
    *,
    max_size: int,
    connect_timeout: float,
    init: Callable[[asyncpg.Connection], Coroutine[Any, Any, None]] | None = None,
) -> asyncpg.Pool:
    """A pool that opens connections on first use and returns them unreset."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=0, max_size=max_size, timeout=connect_timeout, init=init, reset=keep_session
    )
    return pool
