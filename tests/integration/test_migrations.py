"""Migrations against the real Postgres: applied once, in order, safely in parallel; the
``tracking_codes`` table is the one of CONTRACT section 4 and refuses rows that break it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from consumer.admin.migrate import DEFAULT_SQL_DIR, apply_migrations, load_migrations
from consumer.errors import MigrationError

pytestmark = pytest.mark.integration

ALL_VERSIONS = [m.version for m in load_migrations(DEFAULT_SQL_DIR)]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def recorded_versions(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await connection.close()
    return [row["version"] for row in rows]


async def test_first_run_applies_every_migration_and_second_run_applies_nothing(
    empty_database_url,
):
    assert await apply_migrations(empty_database_url) == ALL_VERSIONS
    assert await apply_migrations(empty_database_url) == []
    assert await recorded_versions(empty_database_url) == ALL_VERSIONS


async def test_two_concurrent_runs_both_succeed_and_apply_each_file_once(empty_database_url):
    first, second = await asyncio.gather(
        apply_migrations(empty_database_url), apply_migrations(empty_database_url)
    )
    assert sorted([*first, *second]) == ALL_VERSIONS
    assert await recorded_versions(empty_database_url) == ALL_VERSIONS


async def test_files_are_applied_in_the_order_of_their_number(empty_database_url, tmp_path):
    (tmp_path / "010_second.sql").write_text("INSERT INTO steps VALUES ('second');")
    (tmp_path / "002_first.sql").write_text("CREATE TABLE steps (name text);")
    (tmp_path / "README.txt").write_text("not a migration")
    assert await apply_migrations(empty_database_url, tmp_path) == ["002_first", "010_second"]


async def test_directory_can_come_from_the_environment(empty_database_url, tmp_path, monkeypatch):
    (tmp_path / "001_only.sql").write_text("CREATE TABLE only_here (x int);")
    monkeypatch.setenv("ITEP_WEBHOOKS_SQL_DIR", str(tmp_path))
    assert await apply_migrations(empty_database_url) == ["001_only"]


async def test_failing_file_is_named_and_leaves_nothing_behind(empty_database_url, tmp_path):
    (tmp_path / "001_good.sql").write_text("CREATE TABLE good (x int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE half (x int);\nSELECT * FROM missing;")
    with pytest.raises(MigrationError, match=re.escape("002_bad.sql")):
        await apply_migrations(empty_database_url, tmp_path)
    assert await recorded_versions(empty_database_url) == ["001_good"]
    connection = await asyncpg.connect(empty_database_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('half')") is None
    finally:
        await connection.close()


async def test_changed_file_after_it_was_applied_is_refused(empty_database_url, tmp_path):
    migration = tmp_path / "001_table.sql"
    migration.write_text("CREATE TABLE t (x int);")
    await apply_migrations(empty_database_url, tmp_path)
    migration.write_text("CREATE TABLE t (x bigint);")
    with pytest.raises(MigrationError, match=re.escape("001_table.sql: changed")):
        await apply_migrations(empty_database_url, tmp_path)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"1_short.sql": "SELECT 1;"}, "1_short.sql: not named"),
        ({"001_Upper.sql": "SELECT 1;"}, "001_Upper.sql: not named"),
        ({"001_a.sql": "SELECT 1;", "001_b.sql": "SELECT 1;"}, "number 1 is already used"),
        ({"001_empty.sql": "  \n"}, "001_empty.sql: is empty"),
    ],
)
async def test_malformed_directory_is_refused_before_touching_the_database(
    tmp_path, files, problem
):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(MigrationError, match=problem):
        await apply_migrations("postgresql://postgres@127.0.0.1:1/never", tmp_path)


async def test_unreachable_database_is_a_migration_error_without_the_password():
    with pytest.raises(MigrationError, match="cannot connect") as caught:
        await apply_migrations("postgresql://postgres:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in str(caught.value)


EXPECTED_COLUMNS = {
    # each column's data_type, is_nullable and column_default
    "code": ("text", "NO", None),
    "endpoint_url": ("text", "NO", None),
    "auth_method": ("text", "NO", "'none'::text"),
    "auth_params": ("jsonb", "NO", "'{}'::jsonb"),
    "extra_fields": ("jsonb", "NO", "'{}'::jsonb"),
    "signing_secret": ("text", "YES", None),
    "call_on_finished": ("boolean", "NO", "false"),
    "active": ("boolean", "NO", "true"),
    "created_at": ("timestamp with time zone", "NO", "now()"),
    "updated_at": ("timestamp with time zone", "NO", "now()"),
    # beyond the contract (an extension): pausing a code
    "paused": ("boolean", "NO", "false"),
}


async def test_tracking_codes_has_every_contract_column_with_its_type_and_default(conn):
    rows = await conn.fetch(
        """
        SELECT column_name, data_type, is_nullable, column_default
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'tracking_codes'
        """
    )
    found = {
        row["column_name"]: (row["data_type"], row["is_nullable"], row["column_default"])
        for row in rows
    }
    assert found == EXPECTED_COLUMNS
    primary_key = await conn.fetchval(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = 'tracking_codes'::regclass AND i.indisprimary
        """
    )
    assert primary_key == "code"


async def test_defaults_fill_a_minimal_row(conn):
    row = await conn.fetchrow(
        "INSERT INTO tracking_codes (code, endpoint_url) VALUES ('A', 'https://h/x') RETURNING *"
    )
    assert row["auth_method"] == "none"
    assert orjson.loads(row["auth_params"]) == {}
    assert orjson.loads(row["extra_fields"]) == {}
    assert row["signing_secret"] is None
    assert row["call_on_finished"] is False
    assert row["active"] is True
    assert row["created_at"] == row["updated_at"]


async def test_update_moves_updated_at_and_keeps_created_at(conn):
    await conn.execute("INSERT INTO tracking_codes (code, endpoint_url) VALUES ('A', 'https://h')")
    before = await conn.fetchrow("SELECT created_at, updated_at FROM tracking_codes")
    after = await conn.fetchrow(
        "UPDATE tracking_codes SET active = false WHERE code = 'A' RETURNING created_at, updated_at"
    )
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("auth_method", "digest", "tracking_codes_auth_method_known"),
        ("endpoint_url", "ftp://h/x", "tracking_codes_endpoint_url_http"),
        ("endpoint_url", "hooks.example.edu", "tracking_codes_endpoint_url_http"),
        ("extra_fields", '{"data": "x"}', "tracking_codes_extra_fields_no_data"),
        ("extra_fields", '["a"]', "tracking_codes_extra_fields_object"),
        ("auth_params", '"token"', "tracking_codes_auth_params_object"),
        ("signing_secret", "secret", "tracking_codes_signing_secret_whsec"),
        ("code", "", "tracking_codes_code_not_empty"),
    ],
)
async def test_row_breaking_the_contract_is_refused_by_a_named_constraint(
    conn, column, value, constraint
):
    row = {"code": "A", "endpoint_url": "https://h/x", column: value}
    names = ", ".join(row)
    placeholders = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(
            f"INSERT INTO tracking_codes ({names}) VALUES ({placeholders})",  # noqa: S608
            *row.values(),
        )
    assert caught.value.constraint_name == constraint


async def test_endpoint_scheme_check_ignores_case(conn):
    await conn.execute("INSERT INTO tracking_codes (code, endpoint_url) VALUES ('A', 'HTTPS://h')")
    assert await conn.fetchval("SELECT count(*) FROM tracking_codes") == 1


def test_migration_file_names_are_numbered_and_unique():
    """The shipped sql/ directory loads: every file well named, numbers unique."""
    assert ALL_VERSIONS[0] == "001_tracking_codes"
    assert all(Path(DEFAULT_SQL_DIR, f"{v}.sql").is_file() for v in ALL_VERSIONS)
