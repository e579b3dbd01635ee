"""``itep-webhooks deliveries list|replay``: look into the retry schedule and replay from it.

``register(subparsers)`` adds the ``deliveries`` parser; its subcommand lands in
``args.deliveries_command`` and ``await run(args, database_url)`` carries it out, returning the
exit status: 0 done (also when nothing matches), 1 database unreachable, 2 invalid input (one
line on stderr naming the flag, checked before the database is reached).

``list`` prints one line per row of ``scheduled_deliveries`` (never the event bytes). ``replay``
makes the selected rows due now, from the first step of the schedule: dead ones come back,
pending ones are hurried. It works through their ids in order, ``BATCH_SIZE`` at a time, each
batch one transaction, and leaves alone a row being attempted right now (locked by a
transaction, or pending under a live lease), counting it as skipped; running it again picks
those up.

A TIME is RFC 3339 (``2026-12-02T07:00:00Z``) or a duration meaning that long ago (``90m``,
``2h``, ``1d``), counted back from the database's clock, the one that wrote the times compared.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from consumer.errors import ItepWebhooksError
from consumer.settings import parse_duration

BATCH_SIZE: Final = 1000
DRY_RUN_ROWS: Final = 20
_BAR_WIDTH: Final = 30
_EPILOG: Final = (
    "Different selectors must all match; a repeated one matches any of its values. "
    "TIME is RFC 3339 (2026-12-02T07:00:00Z) or a duration meaning that long ago (90m, 2h, 1d)."
)


class InvalidSelection(ItepWebhooksError):
    """A ``deliveries`` flag that selects nothing sensible: ``flag`` names it, ``rule`` says why."""

    def __init__(self, flag: str, rule: str) -> None:
        super().__init__(f"{flag}: {rule}")
        self.flag = flag
        self.rule = rule


# ------------------------------------------------------------------------------------ parsing


def parse_time(text: str) -> datetime | timedelta:
    """An RFC 3339 time (its zone required), or a duration meaning that long before now."""
    with contextlib.suppress(ValueError, OverflowError):
        return timedelta(seconds=parse_duration(text))
    with contextlib.suppress(ValueError):
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is not None:
            return moment
    raise ValueError(
        f"{text!r} is not an RFC 3339 time (2026-12-02T07:00:00Z) or a duration like 90m, 2h or 1d"
    )


def resolve_time(text: str, now: datetime) -> datetime:
    """A TIME (``parse_time``) as a moment, durations counted back from ``now``; ValueError
    naming what is wrong."""
    value = parse_time(text)
    try:
        return now - value if isinstance(value, timedelta) else value
    except OverflowError:
        raise ValueError(f"{text!r} is too long ago") from None


def _moment(args: argparse.Namespace, dest: str, now: datetime) -> datetime | None:
    text = getattr(args, dest)
    if text is None:
        return None
    try:
        return resolve_time(text, now)
    except ValueError as exc:
        raise InvalidSelection("--" + dest.replace("_", "-"), str(exc)) from None


def _add_selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-code", action="append", metavar="CODE", help="of this code (repeatable)"
    )
    parser.add_argument(
        "--test-id", action="append", metavar="ID", help="of this test (repeatable)"
    )
    parser.add_argument(
        "--event-id", action="append", metavar="ID", help="of this event (repeatable)"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``deliveries`` and its subcommands; the subcommand is ``args.deliveries_command``."""
    parser = subparsers.add_parser(
        "deliveries", help="list or replay scheduled deliveries (the retry schedule)"
    )
    commands = parser.add_subparsers(dest="deliveries_command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list", help="list scheduled deliveries, pending and dead", epilog=_EPILOG
    )
    listing.add_argument(
        "--state", choices=("pending", "dead", "all"), default="all", help="(default all)"
    )
    _add_selectors(listing)
    listing.add_argument("--due-before", metavar="TIME", help="pending ones due before TIME")
    listing.add_argument("--failed-since", metavar="TIME", help="dead ones failed at or after TIME")
    listing.add_argument("--failed-until", metavar="TIME", help="dead ones failed before TIME")
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="show the first N by id (default 50)"
    )

    replay = commands.add_parser(
        "replay",
        help="make deliveries due now, from the first retry step",
        description="Make the selected deliveries due now, from the first step of the retry "
        "schedule. Give at least one selector, or --all.",
        epilog=_EPILOG,
    )
    replay.add_argument(
        "--state",
        choices=("dead", "pending"),
        default="dead",
        help="replay dead ones (default), or make pending ones due now",
    )
    _add_selectors(replay)
    replay.add_argument("--since", metavar="TIME", help="dead ones failed at or after TIME")
    replay.add_argument("--until", metavar="TIME", help="dead ones failed before TIME")
    replay.add_argument("--all", action="store_true", help="every delivery in the state")
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; change nothing"
    )


# ---------------------------------------------------------------------------------- selecting


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rows of ``scheduled_deliveries`` a command acts on; ``None`` or empty: any."""

    state: str | None = None
    tracking_codes: tuple[str, ...] = ()
    test_ids: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    due_before: datetime | None = None
    failed_since: datetime | None = None
    failed_until: datetime | None = None

    def params(self) -> tuple[Any, ...]:
        """The values of ``$1`` to ``$7`` of ``_FILTER``."""
        return (
            self.state,
            list(self.tracking_codes) or None,
            list(self.test_ids) or None,
            list(self.event_ids) or None,
            self.due_before,
            self.failed_since,
            self.failed_until,
        )


def list_selection(args: argparse.Namespace, now: datetime) -> Selection:
    """The rows ``deliveries list`` shows; ``InvalidSelection`` if the flags contradict."""
    state = None if args.state == "all" else args.state
    selection = Selection(
        state=state,
        tracking_codes=tuple(args.tracking_code or ()),
        test_ids=tuple(args.test_id or ()),
        event_ids=tuple(args.event_id or ()),
        due_before=_moment(args, "due_before", now),
        failed_since=_moment(args, "failed_since", now),
        failed_until=_moment(args, "failed_until", now),
    )
    if state == "dead" and selection.due_before is not None:
        raise InvalidSelection("--due-before", "selects pending deliveries, not dead ones")
    for flag, value in (
        ("--failed-since", selection.failed_since),
        ("--failed-until", selection.failed_until),
    ):
        if state == "pending" and value is not None:
            raise InvalidSelection(flag, "selects dead deliveries, not pending ones")
    if args.limit < 1:
        raise InvalidSelection("--limit", "must be at least 1")
    return selection


def replay_selection(args: argparse.Namespace, now: datetime) -> Selection:
    """The rows ``deliveries replay`` acts on; ``InvalidSelection`` without a selector."""
    selection = Selection(
        state=args.state,
        tracking_codes=tuple(args.tracking_code or ()),
        test_ids=tuple(args.test_id or ()),
        event_ids=tuple(args.event_id or ()),
        failed_since=_moment(args, "since", now),
        failed_until=_moment(args, "until", now),
    )
    for flag, value in (("--since", selection.failed_since), ("--until", selection.failed_until)):
        if args.state == "pending" and value is not None:
            raise InvalidSelection(flag, "selects on failed_at, which pending deliveries lack")
    chosen = any(
        (
            selection.tracking_codes,
            selection.test_ids,
            selection.event_ids,
            selection.failed_since,
            selection.failed_until,
        )
    )
    if args.all and chosen:
        raise InvalidSelection("--all", "cannot be combined with a selector")
    if not args.all and not chosen:
        raise InvalidSelection(
            "replay",
            "needs a selector: --tracking-code, --test-id, --event-id, --since or --until "
            f"(or --all for every {args.state} delivery)",
        )
    return selection


# ----------------------------------------------------------------------------------- printing


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, whole seconds: ``2026-12-02T07:36:45Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# How asyncpg hands over Postgres's ``infinity`` (naive, whatever the column's zone).
_INFINITY: Final = datetime.max  # noqa: DTZ901


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        # ``infinity``: a delivery waiting behind an earlier one of its test.
        return "after_earlier" if value == _INFINITY else format_time(value)
    # Ids come from upstream events: a control character must not garble the table.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(value))


_TIME_HEADERS: Final[Mapping[str | None, str]] = {
    "pending": "DUE_AT",
    "dead": "FAILED_AT",
    None: "DUE/FAILED_AT",
}


def _print_table(rows: Sequence[asyncpg.Record], state: str | None) -> None:
    header = ("ID", "STATE", "TRACKING_CODE", "TEST_ID", "EVENT_ID", "TRIGGER", "ATTEMPTS")
    table: list[tuple[str, ...]] = [
        (*header, "STEP", _TIME_HEADERS[state], "REASON", "HTTP_STATUS")
    ]
    for row in rows:
        when = row["due_at"] if row["state"] == "pending" else row["failed_at"]
        table.append(
            tuple(
                _cell(value)
                for value in (
                    row["id"],
                    row["state"],
                    row["tracking_code"],
                    row["test_id"],
                    row["event_id"],
                    row["trigger"],
                    row["attempts"],
                    row["step"],
                    when,
                    row["reason"],
                    row["http_status"],
                )
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]))


def _plural(count: int) -> str:
    return f"{count} deliver{'y' if count == 1 else 'ies'}"


def _print_progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        filled = _BAR_WIDTH * done // total
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        end = "\n" if done == total else ""
        print(f"\rreplaying [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)
    else:
        print(f"replayed {done}/{total}", file=sys.stderr, flush=True)


def _fail(message: str, status: int) -> int:
    print(f"deliveries: {message}", file=sys.stderr)
    return status


# ----------------------------------------------------------------------------------- commands

# Every condition is off while its parameter is NULL. Each query runs once per command, so the
# planner sees the values and keeps only the conditions in use. The queries below are joined
# from these constants only (hence the noqa S608): every value travels as a $n parameter.
_FILTER: Final = """
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::text[] IS NULL OR tracking_code = ANY($2))
  AND ($3::text[] IS NULL OR test_id = ANY($3))
  AND ($4::text[] IS NULL OR event_id = ANY($4))
  AND ($5::timestamptz IS NULL OR (state = 'pending' AND due_at < $5))
  AND ($6::timestamptz IS NULL OR failed_at >= $6)
  AND ($7::timestamptz IS NULL OR failed_at < $7)
"""
_SELECT: Final = (
    """
SELECT id, state, tracking_code, test_id, event_id, trigger, attempts, step, due_at, failed_at,
       reason, http_status
FROM scheduled_deliveries"""
    + _FILTER
    + "ORDER BY id LIMIT $8"
)
_COUNT: Final = "SELECT count(*) FROM scheduled_deliveries" + _FILTER  # noqa: S608
_SELECT_IDS: Final = (
    "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM scheduled_deliveries"  # noqa: S608
    + _FILTER
)
# One statement, so one transaction per batch. A row still in the state but locked (an attempt
# holds it) or pending under a live lease (an instance is attempting it) is skipped, not waited
# for; a row no longer in the state (delivered, gone dead, replayed by someone else) is left.
_REPLAY_BATCH: Final = """
WITH still AS (
    SELECT id FROM scheduled_deliveries WHERE id = ANY($1::bigint[]) AND state = $2
), claimed AS (
    SELECT id FROM scheduled_deliveries
    WHERE id = ANY($1::bigint[]) AND state = $2
      AND (state <> 'pending' OR locked_until IS NULL OR locked_until <= now())
    FOR UPDATE SKIP LOCKED
), replayed AS (
    UPDATE scheduled_deliveries AS d
    SET state = 'pending', step = 0, due_at = now(), failed_at = NULL,
        locked_by = NULL, locked_until = NULL, replays = d.replays + 1
    FROM claimed
    WHERE d.id = claimed.id
    RETURNING d.id
)
SELECT (SELECT count(*) FROM still) AS still, (SELECT count(*) FROM replayed) AS replayed
"""


async def _now(conn: asyncpg.Connection) -> datetime:
    now: datetime = await conn.fetchval("SELECT now()")
    return now


async def _list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    # One snapshot, so that the count line agrees with the table.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        selection = list_selection(args, await _now(conn))
        rows = await conn.fetch(_SELECT, *selection.params(), args.limit)
        matching = await conn.fetchval(_COUNT, *selection.params()) if rows else 0
    if not rows:
        print("no deliveries match")
        return 0
    _print_table(rows, selection.state)
    print(f"{len(rows)} shown of {matching} matching")
    return 0


async def _dry_run(conn: asyncpg.Connection, selection: Selection) -> int:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(_SELECT, *selection.params(), DRY_RUN_ROWS)
        matching = await conn.fetchval(_COUNT, *selection.params()) if rows else 0
    if not rows:
        print("no deliveries match")
        return 0
    print(f"dry run: would replay {_plural(matching)}; nothing changed")
    _print_table(rows, selection.state)
    print(f"{len(rows)} shown of {matching} matching")
    return 0


async def _replay(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    selection = replay_selection(args, await _now(conn))
    if args.dry_run:
        return await _dry_run(conn, selection)
    ids: list[int] = await conn.fetchval(_SELECT_IDS, *selection.params())
    if not ids:
        print("no deliveries match")
        return 0
    replayed = skipped = gone = 0
    for start in range(0, len(ids), BATCH_SIZE):
        batch = ids[start : start + BATCH_SIZE]
        counts = await conn.fetchrow(_REPLAY_BATCH, batch, selection.state)
        assert counts is not None  # an aggregate query yields one row
        replayed += counts["replayed"]
        skipped += counts["still"] - counts["replayed"]
        gone += len(batch) - counts["still"]
        if len(ids) > BATCH_SIZE:
            _print_progress(start + len(batch), len(ids))
    summary = f"replayed {_plural(replayed)}"
    if skipped:
        summary += f", {skipped} skipped (being attempted)"
    if gone:
        summary += f", {gone} no longer {selection.state}"
    print(summary)
    return 0


_COMMANDS: Final[
    Mapping[str, Callable[[asyncpg.Connection, argparse.Namespace], Awaitable[int]]]
] = {
    "list": _list,
    "replay": _replay,
}
_SELECTIONS: Final[Mapping[str, Callable[[argparse.Namespace, datetime], Selection]]] = {
    "list": list_selection,
    "replay": replay_selection,
}


async def run(args: argparse.Namespace, database_url: str) -> int:
    """Carry out ``args.deliveries_command`` against ``database_url``; return the exit status."""
    command = _COMMANDS[args.deliveries_command]
    try:
        # Checked against this clock first; the command selects by the database's.
        _SELECTIONS[args.deliveries_command](args, datetime.now(UTC))
    except InvalidSelection as exc:
        return _fail(f"{exc.flag}: {exc.rule}", 2)
    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(f"cannot reach the database ({exc.__class__.__name__})", 1)
    try:
        return await command(conn, args)
    except InvalidSelection as exc:
        return _fail(f"{exc.flag}: {exc.rule}", 2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(f"database error ({exc.__class__.__name__})", 1)
    finally:
        await conn.close()
