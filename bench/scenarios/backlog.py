"""Scenario 5, backlog: the service's memory against the events waiting when it starts.

For each size in ``plan.backlogs`` (100,000, 300,000, 1,000,000) the events are loaded
first, then the service starts against receivers answering after 200 ms (so that it holds
as much as its bounds let it). The resident memory of its process tree is sampled every
0.5 s from its start: the peak of the summed VmRSS, and the peak of the summed VmHWM (each
process's own high-water mark, read from ``/proc``). The window runs until the backlog is
drained or ``plan.backlog_window`` seconds (90) have passed, whichever is first; throughput
and CPU per webhook are those of that window.
"""

from __future__ import annotations

from bench.context import Context
from bench.results import Backlog
from bench.workload import Workload

MEMORY_EVERY = 0.5


async def run(ctx: Context) -> None:
    plan = ctx.plan
    for size in plan.backlogs:
        async with Workload(ctx, f"backlog{size // 1000}k", delay=plan.slow_delay) as work:
            await work.publish(size)
            relay = await work.service()
            window = await work.run(relay, cap=plan.backlog_window, memory_every=MEMORY_EVERY)
        ctx.results.backlog.append(Backlog(size, window))
        ctx.say(
            f"backlog {size:,}: peak RSS {window.peak_rss_kb / 1024:.0f} MiB,"
            f" peak VmHWM {window.peak_hwm_kb / 1024:.0f} MiB"
        )
