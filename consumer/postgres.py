"""What an unreachable Postgres looks like to asyncpg, for the rooms that wait it out."""

from __future__ import annotations

from typing import Final

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
