"""Scenario 3, slow receivers: the service against its concurrency bound.

The same load as scenario 2, every receiver answering after ``plan.slow_delay`` (200 ms).
Each code has its own port, so with the defaults the bound is
``min(MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_ENDPOINT x codes, MAX_IN_FLIGHT_PER_HOST x origins)``
webhooks in flight, i.e. that over 0.2 s per second (5,000/s), or the limit if it is lower.
The naive consumer runs for ``plan.naive_slow_window`` seconds (it does 5/s).

Before the service, the service's own ``WebhookSender`` in a bare loop (``bench.ceiling``)
POSTs to the same slow receivers with ``MAX_IN_FLIGHT`` workers, no Kafka, no Postgres: on a
busy 2-core machine the receivers answer later than 200 ms, and this is what any client at
that concurrency reaches there.
"""

from __future__ import annotations

from bench.context import Context
from bench.results import Throughput
from bench.scenarios import limit
from bench.workload import Workload


def reference(ctx: Context, in_flight: int, per_endpoint: int, per_host: int) -> tuple[float, str]:
    """(webhooks/s, name): the concurrency bound over the delay, or the limit if lower."""
    codes = ctx.plan.codes
    bound = min(in_flight, per_endpoint * codes, per_host * codes) / ctx.plan.slow_delay
    limit = ctx.results.limit
    if limit is not None and limit.rate < bound:
        return limit.rate, "limit"
    return bound, "bound"


async def run(ctx: Context, *, service: bool, naive: bool) -> None:
    plan, settings, results = ctx.plan, ctx.settings, ctx.results
    ref, ref_name = reference(
        ctx,
        settings.max_in_flight,
        settings.max_in_flight_per_endpoint,
        settings.max_in_flight_per_host,
    )
    if service:
        results.slow_sender = await limit.run(
            ctx, "sender", delay=plan.slow_delay, concurrency=settings.max_in_flight
        )
    async with Workload(ctx, "slow", delay=plan.slow_delay) as work:
        await work.publish(plan.events)
        if service:
            window, note = await work.drain_with_service(plan.events, plan.drain_cap)
            results.throughput.append(
                Throughput("3 slow", "service", plan.events, window, ref, ref_name, note)
            )
        if naive:
            window = await work.run(work.naive(), cap=plan.naive_slow_window)
            results.throughput.append(
                Throughput("3 slow", "naive consumer", plan.events, window, ref, ref_name)
            )
