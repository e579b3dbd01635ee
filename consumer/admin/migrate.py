"""Apply the SQL migrations of ``sql/`` to Postgres (``itep-webhooks migrate``).

A migration is a plain SQL file named ``NNN_description.sql`` (three or more digits, then
lower-case words joined by ``_``). Files are applied in the order of their number, each in its
own transaction together with its row in ``schema_migrations`` (``version`` is the file name
without ``.sql``; ``checksum`` the SHA-256 of the file). A file that changed after it was
applied is refused: write a new migration instead.

The whole run holds a session advisory lock, so two processes migrating at once apply each file
exactly once: the second waits for the first, then finds nothing left to do.

The directory is, in order: the ``directory`` argument, ``$ITEP_WEBHOOKS_SQL_DIR``, or the
``sql/`` folder beside the ``consumer`` package (the repository checkout).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg
import structlog

from consumer.errors import MigrationError

SQL_DIR_ENV: Final = "ITEP_WEBHOOKS_SQL_DIR"
DEFAULT_SQL_DIR: Final = Path(__file__).resolve().parents[2] / "sql"

# Any fixed 64-bit number; advisory locks are scoped to the current database.
_LOCK_KEY: Final = 0x17E9_3E6B_0001
_NAME = re.compile(r"(\d{3,})_[a-z0-9]+(?:_[a-z0-9]+)*\.sql", re.ASCII)

_CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path
    sql: str
    checksum: str


def sql_directory(directory: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The argument, else ``$ITEP_WEBHOOKS_SQL_DIR``, else the repository's ``sql/``."""
    if directory is not None:
        return directory
    configured = environ.get(SQL_DIR_ENV)
    return Path(configured) if configured else DEFAULT_SQL_DIR


def load_migrations(directory: Path) -> list[Migration]:
    """Every ``NNN_description.sql`` of ``directory`` in the order of its number."""
    if not directory.is_dir():
        raise MigrationError(f"{directory}: migrations directory does not exist")
    found: dict[int, Migration] = {}
    for path in directory.iterdir():
        if path.suffix != ".sql":
            continue
        match = _NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: not named NNN_description.sql")
        number = int(match.group(1))
        if number in found:
            raise MigrationError(
                f"{path.name}: number {number} is already used by {found[number].path.name}"
            )
        try:
            raw = path.read_bytes()
            sql = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MigrationError(f"{path.name}: cannot be read ({exc.__class__.__name__})") from exc
        if not sql.strip():
            raise MigrationError(f"{path.name}: is empty")
        found[number] = Migration(
            version=path.stem, path=path, sql=sql, checksum=hashlib.sha256(raw).hexdigest()
        )
    return [found[number] for number in sorted(found)]


async def apply_migrations(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations; return the versions applied by this call, in order."""
    migrations = load_migrations(sql_directory(directory))
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MigrationError(f"cannot connect to the database ({exc.__class__.__name__})") from exc
    try:
        # Held until the connection closes; the ledger is created under it too, because
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin.
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(_CREATE_LEDGER)
        return await _apply_pending(conn, migrations)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MigrationError(f"database error while migrating ({exc.__class__.__name__})") from exc
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: Sequence[Migration]) -> list[str]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    applied: dict[str, str] = {row["version"]: row["checksum"] for row in rows}
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"{migration.path.name}: changed after it was applied; add a new migration instead"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"{migration.path.name}: failed to apply ({exc.__class__.__name__}: {exc})"
            ) from exc
        log.info("migration_applied", version=migration.version)
        done.append(migration.version)
    return done
