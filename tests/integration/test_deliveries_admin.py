"""``itep-webhooks deliveries list|replay`` against the real Postgres: rows put straight into
``scheduled_deliveries``, then listed, filtered, counted and replayed; bad input is exit 2 naming
the flag, a row being attempted is left alone."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from consumer.admin import deliveries as deliveries_admin

pytestmark = pytest.mark.integration

EVENT_BYTES = b'{"test_id": "never-printed-EVENT-BYTES"}'
DUE = datetime(2026, 12, 2, 7, 36, 45, 500_000, tzinfo=UTC)
FAILED = datetime(2026, 12, 2, 9, 0, 1, tzinfo=UTC)
_offsets = itertools.count()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="itep-webhooks")
    commands = parser.add_subparsers(dest="command", required=True)
    deliveries_admin.register(commands)
    return parser.parse_args(argv)


@pytest.fixture
def cli(database_url, capsys):
    """Run one ``deliveries`` command line; return (status, stdout, stderr)."""

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # only this command's output
        status = await deliveries_admin.run(parse(["deliveries", *argv]), database_url)
        out, err = capsys.readouterr()
        return status, out, err

    return run


async def insert(db: asyncpg.Connection, **columns: Any) -> int:
    """One ``scheduled_deliveries`` row: a pending one by default; returns its id."""
    offset = next(_offsets)
    values: dict[str, Any] = {
        "event_id": f"evt-{offset}",
        "test_id": f"T{offset}",
        "tracking_code": "ACME",
        "trigger": "completed",
        "event": EVENT_BYTES,
        "source_topic": "exam-events",
        "source_partition": 0,
        "source_offset": offset,
        "due_at": DUE,
        **columns,
    }
    if values.get("state") == "dead":
        values.setdefault("failed_at", FAILED)
        values.setdefault("reason", "retries_exhausted")
    names = ", ".join(values)
    marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    # The column names are this helper's own keywords; every value is a parameter.
    query = f"INSERT INTO scheduled_deliveries ({names}) VALUES ({marks}) RETURNING id"  # noqa: S608
    return await db.fetchval(query, *values.values())


async def insert_many(db: asyncpg.Connection, count: int, code: str = "BULK") -> None:
    """``count`` dead rows of ``code``."""
    await db.execute(
        """
        INSERT INTO scheduled_deliveries (event_id, test_id, tracking_code, trigger, event,
            source_topic, source_partition, source_offset, state, due_at, failed_at, reason)
        SELECT $1 || '-' || n, 'T' || n, $1, 'completed', '\\x7b7d'::bytea, 'exam-events', 0, n,
               'dead', now(), now(), 'retries_exhausted'
        FROM generate_series(1, $2) AS n
        """,
        code,
        count,
    )


def ids_listed(out: str) -> list[int]:
    """The ID column of a ``list`` table (header and count line left out)."""
    return [int(line.split()[0]) for line in out.splitlines()[1:-1]]


async def rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(row) for row in await db.fetch("SELECT * FROM scheduled_deliveries ORDER BY id")]


# --------------------------------------------------------------------------------------- list


async def test_list_prints_one_line_per_delivery_rfc3339_times_and_a_count_line(cli, db):
    """Pending rows show due_at, dead ones failed_at, and the event bytes never appear."""
    pending = await insert(db, tracking_code="ACME", test_id="50613490BP", event_id="e-1")
    dead = await insert(
        db,
        tracking_code="ACME",
        test_id="50613490BP",
        event_id="e-2",
        trigger="reset",
        state="dead",
        attempts=1,
        reason="http_404",
        http_status=404,
    )
    status, out, err = await cli("list")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "STATE", "TRACKING_CODE", "TEST_ID", "EVENT_ID", "TRIGGER", "ATTEMPTS", "STEP",
        "DUE/FAILED_AT", "REASON", "HTTP_STATUS",
    ]  # fmt: skip
    assert lines[1].split() == [
        str(pending), "pending", "ACME", "50613490BP", "e-1", "completed", "0", "0",
        "2026-12-02T07:36:45Z", "-", "-",
    ]  # fmt: skip
    assert lines[2].split() == [
        str(dead), "dead", "ACME", "50613490BP", "e-2", "reset", "1", "0",
        "2026-12-02T09:00:01Z", "http_404", "404",
    ]  # fmt: skip
    assert lines[3:] == ["2 shown of 2 matching"]
    assert "EVENT-BYTES" not in out


async def test_list_shows_a_delivery_waiting_behind_an_earlier_one_as_due_after_it(cli, db):
    row_id = await insert(db, event_id="e-1", reason="earlier_delivery_pending")
    await db.execute("UPDATE scheduled_deliveries SET due_at = 'infinity' WHERE id = $1", row_id)
    status, out, _ = await cli("list")
    assert status == 0
    assert out.splitlines()[1].split()[8:10] == ["after_earlier", "earlier_delivery_pending"]


async def test_list_names_the_time_column_after_the_state_asked_for(cli, db):
    await insert(db)
    await insert(db, state="dead")
    assert (await cli("list", "--state", "pending"))[1].split()[8] == "DUE_AT"
    assert (await cli("list", "--state", "dead"))[1].split()[8] == "FAILED_AT"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["p-acme", "d-acme", "p-other", "d-other"]),
        (["--state", "all"], ["p-acme", "d-acme", "p-other", "d-other"]),
        (["--state", "pending"], ["p-acme", "p-other"]),
        (["--state", "dead"], ["d-acme", "d-other"]),
        (["--tracking-code", "ACME"], ["p-acme", "d-acme"]),
        (["--tracking-code", "ACME", "--tracking-code", "OTHER"], ["p-acme", "d-acme", "p-other",
                                                                   "d-other"]),
        (["--test-id", "T-other"], ["p-other", "d-other"]),
        (["--event-id", "d-acme"], ["d-acme"]),
        (["--event-id", "d-acme", "--event-id", "p-other"], ["d-acme", "p-other"]),
        (["--state", "dead", "--tracking-code", "OTHER"], ["d-other"]),
        (["--tracking-code", "ACME", "--test-id", "T-other"], []),
    ],
)  # fmt: skip
async def test_list_filters_by_state_tracking_code_test_id_and_event_id(cli, db, argv, expected):
    by_id = {}
    for code in ("acme", "other"):
        for state, prefix in (("pending", "p"), ("dead", "d")):
            event_id = f"{prefix}-{code}"
            by_id[
                await insert(
                    db,
                    state=state,
                    tracking_code=code.upper(),
                    test_id=f"T-{code}",
                    event_id=event_id,
                )
            ] = event_id
    status, out, _ = await cli("list", *argv)
    assert status == 0
    if expected:
        assert [by_id[i] for i in ids_listed(out)] == sorted(
            expected, key=list(by_id.values()).index
        )
        assert out.splitlines()[-1] == f"{len(expected)} shown of {len(expected)} matching"
    else:
        assert out == "no deliveries match\n"


async def test_list_time_filters_take_rfc3339_and_durations_meaning_that_long_ago(cli, db):
    now = datetime.now(UTC)
    old = await insert(db, state="dead", failed_at=now - timedelta(hours=3))
    recent = await insert(db, state="dead", failed_at=now - timedelta(minutes=30))
    overdue = await insert(db, due_at=now - timedelta(hours=2))
    later = await insert(db, due_at=now + timedelta(hours=2))

    assert ids_listed((await cli("list", "--failed-since", "1h"))[1]) == [recent]
    assert ids_listed((await cli("list", "--failed-until", "60m"))[1]) == [old]
    assert ids_listed((await cli("list", "--failed-since", "1d", "--failed-until", "90m"))[1]) == [
        old
    ]
    assert ids_listed((await cli("list", "--due-before", "1h"))[1]) == [overdue]
    assert ids_listed((await cli("list", "--due-before", "0s"))[1]) == [overdue]
    since = format_z(now - timedelta(hours=1))
    assert ids_listed((await cli("list", "--failed-since", since))[1]) == [recent]
    soon = format_z(now + timedelta(hours=3))
    assert ids_listed((await cli("list", "--due-before", soon))[1]) == [overdue, later]


def format_z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_list_limit_shows_the_first_ids_and_counts_every_match(cli, db):
    ids = [await insert(db) for _ in range(5)]
    status, out, _ = await cli("list", "--limit", "2")
    assert status == 0
    assert ids_listed(out) == ids[:2]
    assert out.splitlines()[-1] == "2 shown of 5 matching"


async def test_list_shows_at_most_50_by_default(cli, db):
    await insert_many(db, 60)
    out = (await cli("list"))[1]
    assert len(ids_listed(out)) == 50
    assert out.splitlines()[-1] == "50 shown of 60 matching"


async def test_list_with_nothing_matching_says_so_and_exits_0(cli, db):
    assert await cli("list") == (0, "no deliveries match\n", "")


async def test_list_escapes_control_characters_of_ids(cli, db):
    await insert(db, test_id="T\n1\x1b[31m")
    out = (await cli("list"))[1]
    assert "T\\x0a1\\x1b[31m" in out
    assert "\x1b" not in out


# ------------------------------------------------------------------------------------- replay


async def test_replay_makes_dead_deliveries_pending_from_step_0_and_due_now(cli, db):
    target = await insert(
        db,
        tracking_code="ACME",
        state="dead",
        attempts=7,
        step=7,
        reason="retries_exhausted",
        http_status=503,
        locked_by="instance-1",
        locked_until=datetime(2026, 1, 1, tzinfo=UTC),
        replays=2,
    )
    other = await insert(db, tracking_code="OTHER", state="dead")
    before = {row["id"]: row for row in await rows(db)}

    status, out, err = await cli("replay", "--tracking-code", "ACME")
    assert (status, out, err) == (0, "replayed 1 delivery\n", "")  # one batch: no progress
    row = await db.fetchrow(
        "SELECT *, now() - due_at AS age FROM scheduled_deliveries WHERE id = $1", target
    )
    assert row["state"] == "pending"
    assert (row["step"], row["replays"], row["attempts"]) == (0, 3, 7)
    assert timedelta(0) <= row["age"] < timedelta(seconds=30)
    assert (row["failed_at"], row["locked_by"], row["locked_until"]) == (None, None, None)
    assert (row["reason"], row["http_status"]) == ("retries_exhausted", 503)  # the last failure
    assert row["event"] == EVENT_BYTES
    assert dict((await rows(db))[1]) == before[other]


async def test_replay_selects_dead_ones_by_failed_at_window(cli, db):
    now = datetime.now(UTC)
    await insert(db, state="dead", failed_at=now - timedelta(hours=3))
    recent = await insert(db, state="dead", failed_at=now - timedelta(minutes=30))
    assert (await cli("replay", "--since", "1h"))[1] == "replayed 1 delivery\n"
    assert (
        await db.fetchval("SELECT id FROM scheduled_deliveries WHERE state = 'pending'") == recent
    )
    assert (await cli("replay", "--until", format_z(now)))[1] == "replayed 1 delivery\n"
    assert (await cli("replay", "--until", format_z(now)))[1] == "no deliveries match\n"


async def test_replay_selectors_of_different_kinds_narrow_and_repeated_ones_widen(cli, db):
    a = await insert(db, state="dead", test_id="T-a", event_id="evt-a")
    b = await insert(db, state="dead", test_id="T-b", event_id="evt-b")
    await insert(db, state="dead", test_id="T-c")

    async def replayed(*argv: str) -> list[int]:
        status, _, err = await cli("replay", *argv)
        assert status == 0, err
        found = await db.fetch("SELECT id FROM scheduled_deliveries WHERE replays > 0 ORDER BY id")
        await db.execute("UPDATE scheduled_deliveries SET state = 'dead', replays = 0")
        return [row["id"] for row in found]

    assert await replayed("--test-id", "T-a", "--event-id", "evt-b") == []
    assert await replayed("--test-id", "T-a", "--event-id", "evt-a") == [a]
    assert await replayed("--test-id", "T-a", "--test-id", "T-b") == [a, b]
    assert await replayed("--event-id", "evt-b", "--event-id", "evt-a") == [a, b]


async def test_replay_all_replays_every_dead_delivery_and_no_pending_one(cli, db):
    await insert_many(db, 3)
    untouched = await insert(db, due_at=DUE)
    assert (await cli("replay", "--all"))[1] == "replayed 3 deliveries\n"
    assert await db.fetchval("SELECT count(*) FROM scheduled_deliveries WHERE replays = 1") == 3
    row = await db.fetchrow(
        "SELECT due_at, replays FROM scheduled_deliveries WHERE id = $1", untouched
    )
    assert tuple(row) == (DUE, 0)


async def test_replay_of_pending_deliveries_makes_them_due_now(cli, db):
    later = datetime.now(UTC) + timedelta(hours=5)
    target = await insert(db, tracking_code="ACME", due_at=later, step=3)
    dead = await insert(db, tracking_code="ACME", state="dead")
    status, out, _ = await cli("replay", "--state", "pending", "--tracking-code", "ACME")
    assert (status, out) == (0, "replayed 1 delivery\n")
    row = await db.fetchrow("SELECT * FROM scheduled_deliveries WHERE id = $1", target)
    assert (row["state"], row["step"], row["replays"]) == ("pending", 0, 1)
    assert row["due_at"] < later - timedelta(hours=4)
    assert await db.fetchval("SELECT state FROM scheduled_deliveries WHERE id = $1", dead) == "dead"


async def test_dry_run_prints_the_count_and_first_20_and_changes_nothing(cli, db):
    await insert_many(db, 25)
    before = await rows(db)
    status, out, err = await cli("replay", "--tracking-code", "BULK", "--dry-run")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "dry run: would replay 25 deliveries; nothing changed"
    assert lines[1].split()[8] == "FAILED_AT"
    assert len(lines[2:-1]) == 20
    assert lines[-1] == "20 shown of 25 matching"
    assert await rows(db) == before


async def test_dry_run_with_nothing_matching_says_so(cli, db):
    await insert(db)  # pending: not selected by the default --state dead
    assert await cli("replay", "--all", "--dry-run") == (0, "no deliveries match\n", "")


async def test_replay_skips_a_row_locked_by_another_transaction_and_says_so(cli, db, database_url):
    locked = await insert(db, tracking_code="ACME", state="dead")
    free = await insert(db, tracking_code="ACME", state="dead")
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT 1 FROM scheduled_deliveries WHERE id = $1 FOR UPDATE", locked
            )
            status, out, _ = await asyncio.wait_for(cli("replay", "--tracking-code", "ACME"), 10)
    finally:
        await other.close()
    assert (status, out) == (0, "replayed 1 delivery, 1 skipped (being attempted)\n")
    states = await db.fetch("SELECT id, state, replays FROM scheduled_deliveries ORDER BY id")
    assert [tuple(row) for row in states] == [(locked, "dead", 0), (free, "pending", 1)]
    # Running it again, once the lock is gone, picks the skipped one up.
    assert (await cli("replay", "--tracking-code", "ACME"))[1] == "replayed 1 delivery\n"


async def test_replay_of_pending_skips_a_row_under_a_live_lease(cli, db):
    """An instance holding a lease is attempting the row: its lease is not cleared."""
    until = datetime.now(UTC) + timedelta(minutes=5)
    leased = await insert(db, locked_by="instance-1", locked_until=until)
    expired = await insert(db, locked_by="instance-2", locked_until=until - timedelta(hours=1))
    status, out, _ = await cli("replay", "--state", "pending", "--all")
    assert (status, out) == (0, "replayed 1 delivery, 1 skipped (being attempted)\n")
    row = await db.fetchrow(
        "SELECT locked_by, replays FROM scheduled_deliveries WHERE id = $1", leased
    )
    assert tuple(row) == ("instance-1", 0)
    row = await db.fetchrow(
        "SELECT locked_by, replays FROM scheduled_deliveries WHERE id = $1", expired
    )
    assert tuple(row) == (None, 1)


async def test_replay_in_batches_of_1000_prints_progress_lines_to_stderr(cli, db):
    await insert_many(db, 2500)
    status, out, err = await cli("replay", "--tracking-code", "BULK")
    assert (status, out) == (0, "replayed 2500 deliveries\n")
    assert err.splitlines() == ["replayed 1000/2500", "replayed 2000/2500", "replayed 2500/2500"]
    assert await db.fetchval("SELECT count(*) FROM scheduled_deliveries WHERE state = 'dead'") == 0
    assert await db.fetchval("SELECT min(replays) FROM scheduled_deliveries") == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_replay_progress_is_a_bar_redrawn_in_place_on_a_terminal(cli, db, monkeypatch):
    await insert_many(db, 1001)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    status, out, _ = await cli("replay", "--all")
    assert (status, out) == (0, "replayed 1001 deliveries\n")
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 2
    assert drawn.count("\n") == 1
    assert drawn.endswith("] 1001/1001\n")
    assert "1000/1001" in drawn


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["list", "--due-before", "yesterday"], "--due-before"),
        (["list", "--failed-since", "2026-12-02T07:00:00"], "--failed-since"),  # no zone
        (["list", "--failed-until", "2026-13-02T07:00:00Z"], "--failed-until"),
        (["replay", "--since", "2h ago"], "--since"),
        (["replay", "--until=-1h"], "--until"),
        (["replay", "--since", "99999999999d"], "--since"),
    ],
)
async def test_a_bad_time_exits_2_naming_the_flag(cli, db, argv, flag):
    await insert(db, state="dead")
    before = await rows(db)
    status, out, err = await cli(*argv)
    assert (status, out) == (2, "")
    assert err.startswith(f"deliveries: {flag}: ")
    assert err.count("\n") == 1
    assert await rows(db) == before


async def test_replay_without_a_selector_exits_2_and_changes_nothing(cli, db):
    await insert(db, state="dead")
    before = await rows(db)
    status, out, err = await cli("replay")
    assert (status, out) == (2, "")
    assert err == (
        "deliveries: replay: needs a selector: --tracking-code, --test-id, --event-id, --since"
        " or --until (or --all for every dead delivery)\n"
    )
    assert await cli("replay", "--dry-run") == (2, "", err)
    assert await rows(db) == before


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["list", "--state", "dead", "--due-before", "1h"], "--due-before"),
        (["list", "--state", "pending", "--failed-since", "1h"], "--failed-since"),
        (["list", "--state", "pending", "--failed-until", "1h"], "--failed-until"),
        (["list", "--limit", "0"], "--limit"),
        (["replay", "--state", "pending", "--since", "1h"], "--since"),
        (["replay", "--all", "--tracking-code", "ACME"], "--all"),
    ],
)
async def test_flags_that_contradict_each_other_exit_2_naming_one(cli, argv, flag):
    status, out, err = await cli(*argv)
    assert (status, out) == (2, "")
    assert err.startswith(f"deliveries: {flag}: ")


@pytest.mark.parametrize("argv", [["list"], ["replay", "--all"], ["replay", "--all", "--dry-run"]])
async def test_unreachable_database_is_one_line_without_the_password(capsys, argv):
    status = await deliveries_admin.run(
        parse(["deliveries", *argv]), "postgresql://postgres:hunter2@127.0.0.1:1/x"
    )
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err == "deliveries: cannot reach the database (ConnectionRefusedError)\n"


async def test_bad_input_is_reported_before_the_database_is_reached(capsys):
    args = parse(["deliveries", "replay", "--since", "soon"])
    status = await deliveries_admin.run(args, "postgresql://postgres:hunter2@127.0.0.1:1/x")
    assert status == 2
    assert capsys.readouterr().err.startswith("deliveries: --since: 'soon' is not")


@pytest.mark.parametrize("command", ["list", "replay"])
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["deliveries", command, "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert f"usage: itep-webhooks deliveries {command}" in help_text
    assert "RFC 3339" in help_text


async def test_itep_webhooks_deliveries_runs_from_the_command_line(database_url):
    """The ``deliveries`` group is wired into ``itep-webhooks`` and reads DATABASE_URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "deliveries",
        "list",
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "error"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert (process.returncode, out, err) == (0, b"no deliveries match\n", b"")
