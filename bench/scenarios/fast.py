"""Scenario 2, fast receivers: the service against the limit, with its reference relays.

``plan.events`` Complete events (200,000) over ``plan.tests`` test ids (20,000) and
``plan.codes`` tracking codes (20), loaded before the relay starts; receivers answer at
once. The service drains them (window: first event consumed to last offset committed);
then, on the same events with consumer groups of their own, the plain faststream relay
(window ends at the last webhook's arrival, since it commits before the work) and the naive
consumer (for ``plan.naive_fast_window`` seconds: it is too slow to drain 200,000).
"""

from __future__ import annotations

import importlib.util

from bench.context import Context
from bench.results import Throughput
from bench.workload import Workload


async def run(ctx: Context, *, service: bool, faststream: bool, naive: bool) -> None:
    plan, results = ctx.plan, ctx.results
    limit = results.limit.rate if results.limit else None
    async with Workload(ctx, "fast", delay=0.0) as work:
        await work.publish(plan.events)
        if service:
            window, note = await work.drain_with_service(plan.events, plan.drain_cap)
            results.throughput.append(
                Throughput("2 fast", "service", plan.events, window, limit, "limit", note)
            )
        if faststream:
            if importlib.util.find_spec("faststream") is None:
                results.notes.append(
                    "faststream is not installed (`pip install -e '.[bench]'`): its row is missing."
                )
            else:
                window = await work.run(work.faststream(), cap=plan.faststream_cap)
                results.throughput.append(
                    Throughput("2 fast", "faststream relay", plan.events, window, limit, "limit")
                )
        if naive:
            window = await work.run(work.naive(), cap=plan.naive_fast_window)
            results.throughput.append(
                Throughput("2 fast", "naive consumer", plan.events, window, limit, "limit")
            )
