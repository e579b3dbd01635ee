"""The durable delivery schedule: table ``scheduled_deliveries`` in Postgres. Speaks asyncpg only.

A delivery joins the schedule when an attempt fails and may be retried, when it cannot be
attempted now (tracking code paused, breaker open, the endpoint's share full, an earlier
delivery of its test waiting) and, as ``dead``, when it fails for good. Instances claim due
rows with ``FOR UPDATE SKIP LOCKED`` and hold them by a lease while they attempt them; per
test only the pending row with the lowest id can be claimed, so a test's deliveries leave in
the order they joined.

Every call waits through a Postgres outage, trying again with backoff, so that nothing
handed to the schedule is lost: an outage is logged once when it starts
(``schedule_unavailable``) and once when it ends (``schedule_recovered``). ``add`` calls
made during the same loop tick (or while the previous insert ran) share one ``INSERT``; so
do ``remove``, ``reschedule`` and ``release`` calls, each kind its own statement. When a
breaker opens, ``hold_due`` holds the code's due rows in one transaction instead of a claim
and a reschedule for each.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from consumer.delivery.coalesce import Coalescer
from consumer.errors import StoreUnavailable
from consumer.postgres import UNAVAILABLE, create_pool

log = structlog.get_logger(__name__)

PENDING: Final = "pending"
DEAD: Final = "dead"


# What no retry can fix: a value or a row the database refuses (a bug, not an outage).
_REFUSED: Final = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

_T = TypeVar("_T")
Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a delivery stands: POSTs made, schedule steps used, the last failure or hold."""

    attempts: int
    step: int
    reason: str
    http_status: int | None = None
    endpoint_host: str | None = None
    last_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A row to add. ``test_id`` is stored with NUL replaced (Postgres text cannot hold it);
    the event bytes are stored unchanged."""

    event_id: str
    test_id: str
    tracking_code: str
    trigger: str
    event: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    state: str
    progress: Progress
    due_at: datetime
    # Joins behind an earlier pending delivery of its test: stored not due (``infinity``)
    # while that one is pending, and made due when it is settled (``_REMOVE``, ``_KILL``).
    behind: bool = False


@dataclass(frozen=True, slots=True)
class ScheduledDelivery:
    """A claimed row: held by this instance until it is updated, removed or released."""

    id: int
    event_id: str
    test_id: str
    tracking_code: str
    trigger: str
    event: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    attempts: int
    step: int
    due_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleStats:
    pending: int
    dead: int
    oldest_overdue_seconds: float  # 0 when nothing claimable is overdue
    planned_rows: float = -1.0  # rows the planner's statistics count in the table (-1: none)

    @property
    def statistics_stale(self) -> bool:
        """The rows counted are more than twice what the planner believes (500 at least):
        a schedule that filled within the last minute, before autovacuum analysed it. On a
        table it believes nearly empty, the planner evaluates every due row for each claim
        (a claim of 200 took 157 ms with 50,000 rows, against 28 ms after ``ANALYZE``)."""
        return self.pending + self.dead > 2 * max(self.planned_rows, 500.0)


_COLUMNS: Final = (
    "event_id, test_id, tracking_code, trigger, event, source_topic, source_partition, "
    "source_offset, state, attempts, step, due_at, reason, http_status, endpoint_host, "
    "last_attempt_at, failed_at"
)

# A row behind an earlier pending one of its test is not due until that one is settled: the
# claim's scan of due rows in order never walks over it (with many such rows, a scan that
# checked each one's test cost Postgres more than the deliveries it found).
_INSERT: Final = f"""
INSERT INTO scheduled_deliveries ({_COLUMNS})
SELECT event_id, test_id, tracking_code, trigger, event, source_topic, source_partition,
       source_offset, state, attempts, step,
       CASE WHEN behind AND EXISTS (
           SELECT 1 FROM scheduled_deliveries e WHERE e.test_id = u.test_id AND e.state = 'pending'
       ) THEN 'infinity' ELSE due_at END,
       reason, http_status, endpoint_host, last_attempt_at,
       CASE WHEN state = 'dead' THEN now() END
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[],
            $7::int[], $8::bigint[], $9::text[], $10::int[], $11::int[], $12::timestamptz[],
            $13::text[], $14::int[], $15::text[], $16::timestamptz[], $17::bool[])
    AS u(event_id, test_id, tracking_code, trigger, event, source_topic, source_partition,
         source_offset, state, attempts, step, due_at, reason, http_status, endpoint_host,
         last_attempt_at, behind)
ON CONFLICT (event_id) DO NOTHING
"""  # noqa: S608 - a fixed column list

_CLAIMED: Final = (
    "s.id, s.event_id, s.test_id, s.tracking_code, s.trigger, s.event, s.source_topic, "
    "s.source_partition, s.source_offset, s.attempts, s.step, s.due_at"
)

# What a claim may take (``d`` a row of the schedule): pending and due, not leased, its code
# not paused, the head of its test's pending rows. An open breaker's bulk hold takes the same.
_CLAIMABLE: Final = """d.state = 'pending'
  AND d.due_at <= now()
  AND (d.locked_until IS NULL OR d.locked_until < now())
  AND NOT EXISTS (
      SELECT 1 FROM tracking_codes t WHERE t.code = d.tracking_code AND t.paused)
  AND NOT EXISTS (
      SELECT 1 FROM scheduled_deliveries e
      WHERE e.test_id = d.test_id AND e.state = 'pending' AND e.id < d.id)"""

# The claimable rows of the codes not excluded, in due order.
_CLAIM: Final = f"""
WITH due AS (
    SELECT d.id
    FROM scheduled_deliveries d
    WHERE {_CLAIMABLE}
      AND d.tracking_code <> ALL($2::text[])
      AND ($5::text IS NULL OR d.source_topic = $5)
    ORDER BY d.due_at, d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE scheduled_deliveries s
SET locked_by = $3, locked_until = now() + make_interval(secs => $4)
FROM due
WHERE s.id = due.id
RETURNING {_CLAIMED}
"""  # noqa: S608 - a fixed column list

# The claim must walk the due index in order and stop at its limit. Statistics that lag
# behind a schedule filled or emptied within seconds made the planner read every due row and
# sort them instead: 235 ms against 14 ms for 200 of 50,000 rows (``EXPLAIN ANALYZE``, the
# statistics of an empty table). Within the claim's transaction, only the ordered scan is
# left to choose.
_CLAIM_PLAN: Final = (
    "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off"
)

_RESCHEDULE: Final = """
UPDATE scheduled_deliveries s
SET due_at = u.due_at, attempts = u.attempts, step = u.step, reason = u.reason,
    http_status = u.http_status, endpoint_host = COALESCE(u.endpoint_host, s.endpoint_host),
    last_attempt_at = COALESCE(u.last_attempt_at, s.last_attempt_at),
    locked_by = NULL, locked_until = NULL
FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::int[], $5::text[], $6::int[],
            $7::text[], $8::timestamptz[])
    AS u(id, due_at, attempts, step, reason, http_status, endpoint_host, last_attempt_at)
WHERE s.id = u.id
"""

# Both return whether another pending row of the same test is left, and make the next one
# due when it was waiting behind (``infinity``). The statement sees the table as it was
# before its own changes, hence ``e.id <> ALL($1)``.
_NEXT_DUE: Final = """
next_due AS (
    UPDATE scheduled_deliveries n SET due_at = now()
    FROM settled
    WHERE n.test_id = settled.test_id AND n.state = 'pending' AND n.due_at = 'infinity'
      AND n.id = (
          SELECT min(e.id) FROM scheduled_deliveries e
          WHERE e.test_id = settled.test_id AND e.state = 'pending' AND e.id <> ALL($1))
)
"""
_OTHERS: Final = """
EXISTS (
    SELECT 1 FROM scheduled_deliveries e
    WHERE e.test_id = settled.test_id AND e.state = 'pending' AND e.id <> ALL($1::bigint[])
) AS others
"""

_KILL: Final = f"""
WITH settled AS (
    UPDATE scheduled_deliveries
    SET state = 'dead', attempts = $2, step = $3, reason = $4, http_status = $5,
        endpoint_host = COALESCE($6, endpoint_host),
        last_attempt_at = COALESCE($7, last_attempt_at),
        failed_at = now(), locked_by = NULL, locked_until = NULL
    WHERE id = ANY($1::bigint[])
    RETURNING id, test_id
), {_NEXT_DUE}
SELECT {_OTHERS} FROM settled
"""  # noqa: S608 - fixed fragments

_REMOVE: Final = f"""
WITH settled AS (
    DELETE FROM scheduled_deliveries WHERE id = ANY($1::bigint[]) RETURNING id, test_id
), {_NEXT_DUE}
SELECT settled.id, {_OTHERS} FROM settled
"""  # noqa: S608 - fixed fragments

# A row left behind when its earlier one was settled while it was being added (two
# statements at once, neither seeing the other's row) is made due by the housekeeping.
_BEHIND_FREED: Final = """
UPDATE scheduled_deliveries d SET due_at = now()
WHERE d.state = 'pending' AND d.due_at = 'infinity'
  AND ($1::text IS NULL OR d.source_topic = $1)
  AND NOT EXISTS (
      SELECT 1 FROM scheduled_deliveries e
      WHERE e.test_id = d.test_id AND e.state = 'pending' AND e.id < d.id)
"""

# An open breaker's hold, in bulk: the code's rows that a claim would take now, except those
# on the schedule's last step, which are attempted whatever the breaker says.
_HOLD_DUE: Final = f"""
SELECT {_CLAIMED.replace("s.", "d.")}
FROM scheduled_deliveries d
WHERE {_CLAIMABLE}
  AND d.tracking_code = $1
  AND d.step < $2
  AND ($4::text IS NULL OR d.source_topic = $4)
LIMIT $3
FOR UPDATE OF d SKIP LOCKED
"""  # noqa: S608 - a fixed column list

# Each held row uses up its step, as a hold of one delivery does (``_RESCHEDULE``).
_HOLD: Final = """
UPDATE scheduled_deliveries s
SET step = s.step + 1, due_at = now() + make_interval(secs => u.delay), reason = $3,
    http_status = NULL, endpoint_host = COALESCE($4, s.endpoint_host)
FROM unnest($1::bigint[], $2::float8[]) AS u(id, delay)
WHERE s.id = u.id
RETURNING s.id, s.due_at
"""

_RELEASE: Final = """
UPDATE scheduled_deliveries SET locked_by = NULL, locked_until = NULL
WHERE id = ANY($1::bigint[]) AND locked_by = $2
"""

_RENEW: Final = """
UPDATE scheduled_deliveries SET locked_until = now() + make_interval(secs => $2)
WHERE locked_by = $1 AND id = ANY($3::bigint[])
"""

_RELEASE_ALL: Final = """
UPDATE scheduled_deliveries SET locked_by = NULL, locked_until = NULL WHERE locked_by = $1
"""

_WAITING_TESTS: Final = """
SELECT DISTINCT source_partition, test_id
FROM scheduled_deliveries
WHERE state = 'pending' AND source_topic = $1 AND source_partition = ANY($2::int[])
"""

# Rows written from offsets at or after each partition's committed offset: those events may
# be consumed again, and their deliveries are the schedule's already.
_HANDED: Final = """
SELECT s.source_partition, s.source_offset
FROM scheduled_deliveries s
JOIN unnest($2::int[], $3::bigint[]) AS c(partition, committed)
  ON s.source_partition = c.partition AND s.source_offset >= c.committed
WHERE s.source_topic = $1
"""

_STILL_WAITING: Final = """
SELECT DISTINCT test_id FROM scheduled_deliveries
WHERE state = 'pending' AND test_id = ANY($1::text[])
"""

_STATS: Final = """
SELECT
    count(*) FILTER (WHERE d.state = 'pending') AS pending,
    count(*) FILTER (WHERE d.state = 'dead') AS dead,
    COALESCE(EXTRACT(EPOCH FROM now() - min(d.due_at) FILTER (
        WHERE d.state = 'pending' AND d.due_at <= now()
          AND (d.locked_until IS NULL OR d.locked_until < now())
          AND NOT COALESCE(t.paused, false)
          AND NOT EXISTS (
              SELECT 1 FROM scheduled_deliveries e
              WHERE e.test_id = d.test_id AND e.state = 'pending' AND e.id < d.id))), 0)::float8
        AS oldest_overdue,
    (SELECT reltuples FROM pg_class WHERE oid = 'scheduled_deliveries'::regclass)::float8
        AS planned_rows
FROM scheduled_deliveries d
LEFT JOIN tracking_codes t ON t.code = d.tracking_code
WHERE $1::text IS NULL OR d.source_topic = $1
"""


def _progress_args(progress: Progress) -> tuple[object, ...]:
    return (
        progress.attempts,
        progress.step,
        progress.reason,
        progress.http_status,
        progress.endpoint_host,
        progress.last_attempt_at,
    )


def _scheduled(row: asyncpg.Record) -> ScheduledDelivery:
    return ScheduledDelivery(
        id=row["id"],
        event_id=row["event_id"],
        test_id=row["test_id"],
        tracking_code=row["tracking_code"],
        trigger=row["trigger"],
        event=bytes(row["event"]),
        source_topic=row["source_topic"],
        source_partition=row["source_partition"],
        source_offset=row["source_offset"],
        attempts=row["attempts"],
        step=row["step"],
        due_at=row["due_at"],
    )


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")


class ScheduleStore:
    """The schedule over an asyncpg pool; ``start()`` before use, ``close()`` after.

    ``owner`` names this instance in the leases it takes. With ``topic``, it claims and
    counts only the deliveries consumed from that topic: two deployments that share one
    database (each with its own topics) never attempt each other's deliveries, which would
    publish their outcomes to the wrong topic.
    """

    def __init__(
        self,
        dsn: str,
        *,
        owner: str,
        topic: str | None = None,
        pool_size: int = 4,
        query_timeout: float = 10.0,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self.owner = owner
        self.topic = topic
        self._pool_size = pool_size
        self._query_timeout = query_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._pool: asyncpg.Pool | None = None
        self._outage_started: float | None = None
        self._inserts: Coalescer[NewDelivery, None] = Coalescer("insert", self._insert_batch)
        self._removes: Coalescer[int, bool] = Coalescer("remove", self._remove_batch)
        self._reschedules: Coalescer[tuple[int, Progress, datetime], None] = Coalescer(
            "reschedule", self._reschedule_batch
        )
        self._releases: Coalescer[list[int], None] = Coalescer("release", self._release_batch)
        self._batchers = (self._inserts, self._removes, self._reschedules, self._releases)

    @property
    def available(self) -> bool:
        return self._outage_started is None

    def statements(self) -> dict[str, int]:
        """Per kind of batched write (insert, remove, reschedule, release), the statements
        sent so far; each carries the rows of one batch."""
        return {batcher.name: batcher.flushes for batcher in self._batchers}

    async def start(self) -> None:
        self._pool = await create_pool(
            self._dsn, max_size=self._pool_size, connect_timeout=self._query_timeout
        )
        for batcher in self._batchers:
            batcher.start()

    async def close(self) -> None:
        for batcher in self._batchers:
            await batcher.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._query_timeout)
            except TimeoutError:
                self._pool.terminate()

    # -- adding ---------------------------------------------------------------------

    async def add(self, delivery: NewDelivery) -> None:
        """Add a row (a row of the same ``event_id`` already there is kept as it is);
        returns once it is committed."""
        await self._inserts.submit(delivery)

    async def _insert_batch(self, rows: list[NewDelivery]) -> list[BaseException | None]:
        try:
            await self._retrying("insert", functools.partial(self._insert_rows, rows=rows))
        except _REFUSED:
            # One row the database refuses must not fail the others: add them one by one.
            return [await self._insert_one(row) for row in rows]
        return [None] * len(rows)

    async def _insert_one(self, row: NewDelivery) -> BaseException | None:
        try:
            await self._retrying("insert", functools.partial(self._insert_rows, rows=[row]))
        except _REFUSED as exc:
            log.exception("schedule_row_refused", error=type(exc).__name__, event_id=row.event_id)
            return exc
        return None

    @staticmethod
    async def _insert_rows(conn: Connection, rows: Sequence[NewDelivery]) -> None:
        await conn.execute(
            _INSERT,
            [r.event_id for r in rows],
            [_storable(r.test_id) for r in rows],
            [r.tracking_code for r in rows],
            [r.trigger for r in rows],
            [r.event for r in rows],
            [r.source_topic for r in rows],
            [r.source_partition for r in rows],
            [r.source_offset for r in rows],
            [r.state for r in rows],
            [r.progress.attempts for r in rows],
            [r.progress.step for r in rows],
            [r.due_at for r in rows],
            [r.progress.reason for r in rows],
            [r.progress.http_status for r in rows],
            [r.progress.endpoint_host for r in rows],
            [r.progress.last_attempt_at for r in rows],
            [r.behind for r in rows],
        )

    # -- claiming and settling ----------------------------------------------------------

    async def claim(
        self, limit: int, *, exclude: Iterable[str] = (), lease: float
    ) -> list[ScheduledDelivery]:
        """Claim up to ``limit`` due rows (the head of each test's queue), leased for
        ``lease`` seconds; codes in ``exclude`` are passed over. One try: the caller
        polls again."""
        excluded = list(exclude)

        async def claim_in_order(conn: Connection) -> list[asyncpg.Record]:
            async with conn.transaction():
                await conn.execute(_CLAIM_PLAN)
                return list(
                    await conn.fetch(_CLAIM, limit, excluded, self.owner, lease, self.topic)
                )

        rows = await self._once(claim_in_order)
        return [_scheduled(row) for row in sorted(rows, key=lambda r: (r["due_at"], r["id"]))]

    async def hold_due(
        self,
        code: str,
        *,
        before_step: int,
        limit: int,
        reason: str,
        endpoint_host: str | None,
        plan: Callable[[list[ScheduledDelivery]], dict[int, float]],
    ) -> list[tuple[ScheduledDelivery, datetime]]:
        """Hold ``code``'s due rows without claiming them, for ``reason``: up to ``limit``
        of the rows a claim would take now whose step is before ``before_step``. ``plan``
        is given them and answers, by row id, how many seconds each is held; each row it
        names uses up a step and is due then, the others are left as they were. Returns
        the rows held with their new due times. One transaction, one try."""

        async def hold(conn: Connection) -> list[tuple[ScheduledDelivery, datetime]]:
            async with conn.transaction():
                found = await conn.fetch(_HOLD_DUE, code, before_step, limit, self.topic)
                rows = {row.id: row for row in map(_scheduled, found)}
                delays = plan(list(rows.values()))
                if not delays:
                    return []
                ids = list(delays)
                held = await conn.fetch(_HOLD, ids, [delays[i] for i in ids], reason, endpoint_host)
            return [(rows[h["id"]], h["due_at"]) for h in held]

        return await self._once(hold)

    async def reschedule(self, row_id: int, progress: Progress, due_at: datetime) -> None:
        """Put a claimed row back, pending until ``due_at``; the lease ends. The
        reschedules of one moment share one ``UPDATE``."""
        await self._reschedules.submit((row_id, progress, due_at))

    async def _reschedule_batch(
        self, rows: list[tuple[int, Progress, datetime]]
    ) -> list[BaseException | None]:
        columns = (
            [row_id for row_id, _, _ in rows],
            [due_at for _, _, due_at in rows],
            [p.attempts for _, p, _ in rows],
            [p.step for _, p, _ in rows],
            [p.reason for _, p, _ in rows],
            [p.http_status for _, p, _ in rows],
            [p.endpoint_host for _, p, _ in rows],
            [p.last_attempt_at for _, p, _ in rows],
        )
        await self._retrying("reschedule", lambda conn: conn.execute(_RESCHEDULE, *columns))
        return [None] * len(rows)

    async def kill(self, row_id: int, progress: Progress) -> bool:
        """Mark a claimed row dead (kept for replay); True when its test has other
        pending rows."""
        value = await self._retrying(
            "kill", lambda conn: conn.fetchval(_KILL, [row_id], *_progress_args(progress))
        )
        return bool(value)

    async def remove(self, row_id: int) -> bool:
        """Delete a settled row; True when its test has other pending rows. The removes
        of one moment share one ``DELETE``."""
        return await self._removes.submit(row_id)

    async def _remove_batch(self, row_ids: list[int]) -> list[bool | BaseException]:
        rows = await self._retrying("remove", lambda conn: conn.fetch(_REMOVE, row_ids))
        others = {row["id"]: row["others"] for row in rows}
        return [bool(others.get(row_id)) for row_id in row_ids]

    async def release(self, row_ids: Sequence[int]) -> None:
        """Give claimed rows back unchanged. The releases of one moment share one
        ``UPDATE``."""
        if row_ids:
            await self._releases.submit(list(row_ids))

    async def _release_batch(self, batches: list[list[int]]) -> list[BaseException | None]:
        ids = [row_id for row_ids in batches for row_id in row_ids]
        await self._retrying("release", lambda conn: conn.execute(_RELEASE, ids, self.owner))
        return [None] * len(batches)

    async def renew(self, row_ids: Sequence[int], lease: float) -> None:
        """Extend the leases on rows still being attempted; one try."""
        if row_ids:
            ids = list(row_ids)
            await self._once(lambda conn: conn.execute(_RENEW, self.owner, lease, ids))

    async def release_all(self) -> None:
        """Give back every lease this instance holds (at shutdown); one try."""
        await self._once(lambda conn: conn.execute(_RELEASE_ALL, self.owner))

    # -- what the consume loop and the metrics read -----------------------------------

    async def waiting_tests(self, topic: str, partitions: Sequence[int]) -> dict[int, set[str]]:
        """The test ids with pending rows that came from each of ``partitions``."""
        parts = list(partitions)
        rows = await self._retrying(
            "load_waiting", lambda conn: conn.fetch(_WAITING_TESTS, topic, parts)
        )
        out: dict[int, set[str]] = {p: set() for p in parts}
        for row in rows:
            out[row["source_partition"]].add(row["test_id"])
        return out

    async def handed_over(self, topic: str, committed: dict[int, int]) -> dict[int, set[int]]:
        """Per partition, the offsets at or after ``committed[partition]`` whose events
        are in the schedule (pending or dead)."""
        parts = list(committed)
        offsets = [committed[p] for p in parts]
        rows = await self._retrying(
            "load_handed", lambda conn: conn.fetch(_HANDED, topic, parts, offsets)
        )
        out: dict[int, set[int]] = {p: set() for p in parts}
        for row in rows:
            out[row["source_partition"]].add(row["source_offset"])
        return out

    async def still_waiting(self, test_ids: Sequence[str]) -> set[str]:
        """Which of ``test_ids`` still have pending rows; one try."""
        ids = [_storable(t) for t in test_ids]
        rows = await self._once(lambda conn: conn.fetch(_STILL_WAITING, ids))
        return {row["test_id"] for row in rows}

    async def free_behind(self) -> int:
        """Make due the rows waiting behind an earlier delivery that is no longer pending
        (see ``_BEHIND_FREED``); one try. Returns how many."""
        status = await self._once(lambda conn: conn.execute(_BEHIND_FREED, self.topic))
        return int(status.split()[-1])

    async def stats(self) -> ScheduleStats:
        """Counts by state and the age of the oldest overdue claimable row; one try."""
        row = await self._once(lambda conn: conn.fetchrow(_STATS, self.topic))
        assert row is not None  # an aggregate always yields a row
        return ScheduleStats(
            row["pending"], row["dead"], float(row["oldest_overdue"]), float(row["planned_rows"])
        )

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the table; one try."""
        await self._once(lambda conn: conn.execute("ANALYZE scheduled_deliveries"))

    # -- connections --------------------------------------------------------------------

    async def _once(self, query: Callable[[Connection], Awaitable[_T]]) -> _T:
        if self._pool is None:
            raise StoreUnavailable("the schedule is not running")
        try:
            async with asyncio.timeout(self._query_timeout), self._pool.acquire() as conn:
                result = await query(conn)
        except UNAVAILABLE as exc:
            self._note_unavailable("query", exc)
            raise StoreUnavailable(f"the schedule is unavailable ({type(exc).__name__})") from exc
        self._note_recovered()
        return result

    async def _retrying(self, what: str, query: Callable[[Connection], Awaitable[_T]]) -> _T:
        """Run ``query`` until it succeeds, waiting through outages."""
        delay = self._retry_initial
        while True:
            if self._pool is None:
                raise StoreUnavailable("the schedule is not running")
            try:
                async with asyncio.timeout(self._query_timeout), self._pool.acquire() as conn:
                    result = await query(conn)
            except _REFUSED:
                raise
            except UNAVAILABLE as exc:
                self._note_unavailable(what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception:
                # Whatever else the driver raises mid-outage, the delivery must not be dropped:
                # logged with its traceback (a bug shows), then tried again.
                log.exception("schedule_query_failed", operation=what)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self._note_recovered()
            return result

    def _note_unavailable(self, what: str, exc: BaseException) -> None:
        if self._outage_started is not None:
            return
        self._outage_started = time.monotonic()
        log.warning(
            "schedule_unavailable",
            error=type(exc).__name__,
            waiting_for="Postgres",
            operation=what,
        )

    def _note_recovered(self) -> None:
        if self._outage_started is None:
            return
        seconds = time.monotonic() - self._outage_started
        self._outage_started = None
        log.info("schedule_recovered", outage_seconds=round(seconds, 3))
