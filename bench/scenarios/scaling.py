"""Scenario 7, scaling: throughput against ``MAX_IN_FLIGHT`` and against processes.

In flight: scenario 3's set-up (slow receivers, 200 ms) with ``MAX_IN_FLIGHT`` at each of
``plan.scaling_in_flight``. Where the per-code share or the per-origin limit would bind
before it (``MAX_IN_FLIGHT_PER_ENDPOINT x codes`` or ``MAX_IN_FLIGHT_PER_HOST x origins``
below twice the mean need), both are raised to ``2 x MAX_IN_FLIGHT / codes`` and the row says
so. Each run is sized to last ``plan.scaling_seconds`` at its reference rate (the bound, or
the limit if lower; or 1.5 x the service's rate in scenario 3 if that is lower still) and
measured like scenario 3, cut at three times the planned seconds.

Processes: scenario 2's set-up (fast receivers) with ``plan.scaling_process_events`` events
and the service run as ``python -m consumer run --processes N`` for each N in
``plan.scaling_processes``; while that flag does not exist, as N instances in one consumer
group (the row says which).
"""

from __future__ import annotations

import math

from bench.context import Context
from bench.results import Throughput
from bench.scenarios.slow import reference
from bench.workload import Workload

MIN_EVENTS = 2_000


async def run(ctx: Context, *, in_flight: bool = True, processes: bool = True) -> None:
    if in_flight:
        await _in_flight(ctx)
    if processes:
        await _processes(ctx)


async def _in_flight(ctx: Context) -> None:
    plan, settings, results = ctx.plan, ctx.settings, ctx.results
    # Sized by the reference, or by 1.5 x what the service did in scenario 3 when that is
    # lower (a CPU-bound service would otherwise take many times the planned seconds).
    slow_rates = [r.window.rate for r in results.throughput if r.scenario == "3 slow"]
    expected = 1.5 * slow_rates[0] if slow_rates else float("inf")
    for in_flight in plan.scaling_in_flight:
        share = max(settings.max_in_flight_per_endpoint, settings.max_in_flight_per_host)
        needed = math.ceil(2 * in_flight / plan.codes)
        env = {"MAX_IN_FLIGHT": str(in_flight)}
        note = ""
        per_endpoint, per_host = (
            settings.max_in_flight_per_endpoint,
            settings.max_in_flight_per_host,
        )
        if needed > min(per_endpoint, per_host):
            per_endpoint = per_host = max(needed, share)
            env["MAX_IN_FLIGHT_PER_ENDPOINT"] = env["MAX_IN_FLIGHT_PER_HOST"] = str(per_host)
            note = f"MAX_IN_FLIGHT_PER_ENDPOINT and _PER_HOST raised to {per_host}"
        ref, ref_name = reference(ctx, in_flight, per_endpoint, per_host)
        events = max(MIN_EVENTS, round(min(ref, expected) * plan.scaling_seconds))
        async with Workload(ctx, f"inflight{in_flight}", delay=plan.slow_delay) as work:
            await work.publish(events)
            window, counts = await work.drain_with_service(
                events, 3 * plan.scaling_seconds + 10, env
            )
        results.throughput.append(
            Throughput(
                "7 slow",
                f"service, MAX_IN_FLIGHT={in_flight:,}",
                events,
                window,
                ref,
                ref_name,
                "; ".join(part for part in (note, counts) if part),
            )
        )


async def _processes(ctx: Context) -> None:
    plan, results = ctx.plan, ctx.results
    limit = results.limit.rate if results.limit else None
    for processes in plan.scaling_processes:
        if processes == 1:
            how = "1 process"
        elif ctx.processes_flag:
            how = f"--processes {processes}"
        else:
            how = f"{processes} instances, one group"

        events = plan.scaling_process_events
        async with Workload(ctx, f"processes{processes}", delay=0.0) as work:
            await work.publish(events)
            window, counts = await work.drain_with_service(events, 300.0, processes=processes)
        note = "" if ctx.processes_flag or processes == 1 else "no --processes flag yet"
        results.throughput.append(
            Throughput(
                "7 fast",
                f"service, {how}",
                events,
                window,
                limit,
                "limit",
                "; ".join(part for part in (note, counts) if part),
                processes,
            )
        )
