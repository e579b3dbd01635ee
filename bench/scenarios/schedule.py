"""Scenario 8, schedule: deliveries worked through from Postgres rather than from Kafka.

A partner resumed after a pause, a replay, and the end of an outage all hand the service a
schedule full of due deliveries at once. Two runs, each its own workload (receivers that
answer at once, ``plan.codes`` codes, ``plan.schedule_events`` events):

- **resumed**: every code is paused before the service starts, so every event joins the
  schedule (``tracking_code_paused``, or ``earlier_delivery_pending`` behind its test's
  first). Once all the rows are written the codes are resumed, and the runner claims,
  delivers and removes them. Measured from the first webhook's arrival to the last.
- **held again**: the same, with every code's URL on a port where nothing listens. Resumed,
  the runner claims each test's first delivery; the first attempts of each code are
  refused, its breaker opens, and every other claimed delivery is put back for
  ``circuit_open``, one step of the schedule used. Measured until every test's first
  delivery has used a step (the rows' ``updated_at``, written by Postgres, give the window).

Each reports rows per second and the CPU per row of the service and of Postgres (every
``postgres`` process on the machine, from ``/proc``), both over the window: in this path
Postgres does as much of the work as the service. The first CPU reading is taken at the
first tick (0.1 s, 0.25 s for the second run, whose tick is a query) that sees progress, so
the seconds before the service notices the codes were resumed (its tracking-code cache) are
left out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from bench.context import Context
from bench.procs import ProcessTree, postgres_tree
from bench.results import Scheduled
from bench.stack import free_port
from bench.workload import Workload

CAP = 600.0  # seconds any wait of this scenario may take

_PENDING = """
SELECT count(*) FROM scheduled_deliveries WHERE starts_with(tracking_code, $1) AND state = 'pending'
"""
_TESTS = """
SELECT count(DISTINCT test_id) FROM scheduled_deliveries WHERE starts_with(tracking_code, $1)
"""
_STEPPED = """
SELECT count(*), EXTRACT(EPOCH FROM max(updated_at) - min(updated_at))::float8
FROM scheduled_deliveries WHERE starts_with(tracking_code, $1) AND step >= 1
"""


async def run(ctx: Context) -> None:
    for kind in ("resumed", "held again"):
        ctx.results.scheduled.append(await _one(ctx, kind))


async def _one(ctx: Context, kind: str) -> Scheduled:
    events = ctx.plan.schedule_events
    name = "schedule-" + kind.replace(" ", "-")
    async with Workload(ctx, name, delay=0.0) as work:
        conn = await asyncpg.connect(ctx.dsn)
        try:
            codes = "UPDATE tracking_codes SET paused = true WHERE starts_with(code, $1)"
            await conn.execute(codes, work.prefix)
            if kind == "held again":
                dead = f"http://127.0.0.1:{free_port()}/down"
                await conn.execute(
                    "UPDATE tracking_codes SET endpoint_url = $2 WHERE starts_with(code, $1)",
                    work.prefix,
                    dead,
                )
            await work.publish(events)
            service = await work.service()
            await service.relay.start()
            try:
                await _until(lambda: _count(conn, _PENDING, work.prefix), events, 0.5)
                ctx.say(f"{name}: {events:,} deliveries in the schedule; resuming the codes")
                progress = _Progress(service.relay.tree, postgres_tree())
                resume = "UPDATE tracking_codes SET paused = false WHERE starts_with(code, $1)"
                if kind == "resumed":
                    await work.receiver.reset()
                    await conn.execute(resume, work.prefix)

                    async def received() -> int:
                        service.relay.check_alive()
                        return (await work.receiver.stats()).count

                    await _until(received, events, 0.1, progress.tick)
                    stats = await work.receiver.stats()
                    rows, seconds = stats.count, stats.last - stats.first
                else:
                    heads = await _count(conn, _TESTS, work.prefix)
                    await conn.execute(resume, work.prefix)

                    async def stepped() -> int:
                        service.relay.check_alive()
                        return await _count(conn, _STEPPED, work.prefix)

                    await _until(stepped, heads, 0.25, progress.tick)
                    row = await conn.fetchrow(_STEPPED, work.prefix)
                    assert row is not None
                    rows, seconds = int(row[0]), float(row[1])
            finally:
                await service.relay.stop()
        finally:
            await conn.close()
    result = Scheduled(kind, rows, seconds, *progress.used())
    ctx.say(
        f"{name}: {result.rows:,} rows in {result.seconds:.1f} s = {result.rate:,.0f}/s;"
        f" CPU per row: service {result.service_cpu_ms:.3f} ms,"
        f" Postgres {result.postgres_cpu_ms:.3f} ms"
    )
    return result


class _Progress:
    """CPU of the service and of Postgres, from the first tick that saw progress to the last."""

    def __init__(self, *trees: ProcessTree) -> None:
        self.trees = trees
        self.start: list[float] | None = None
        self.last: list[float] = []

    def tick(self, count: int) -> None:
        readings = [tree.cpu_seconds() for tree in self.trees]
        if count > 0 and self.start is None:
            self.start = readings
        self.last = readings

    def used(self) -> tuple[float, float]:
        start = self.start or self.last
        service, postgres = (b - a for a, b in zip(start, self.last, strict=True))
        return service, postgres


async def _count(conn: asyncpg.Connection, query: str, prefix: str) -> int:
    value = await conn.fetchval(query, prefix)
    return int(value or 0)


async def _until(
    count: Callable[[], Awaitable[int]],
    target: int,
    every: float,
    tick: Callable[[int], None] = lambda n: None,
) -> None:
    """Poll ``count`` every ``every`` seconds until it reaches ``target``, handing each
    reading (the last included) to ``tick``; at most ``CAP`` seconds."""
    deadline = time.monotonic() + CAP
    while (n := await count()) < target:
        tick(n)
        if time.monotonic() > deadline:
            raise TimeoutError(f"scenario 8: {n:,} of {target:,} after {CAP:.0f} s")
        await asyncio.sleep(every)
    tick(n)
