"""Scenario 4, latency: publication to arrival at steady rates, fast receivers.

The service starts on an empty topic and is warmed up (``plan.latency_warmup`` seconds at
100 events/s: connections opened, codes cached; not reported). Then the producer publishes
at each of ``plan.latency_rates`` (500, then 2,000 events/s) for ``plan.latency_seconds``
each, back to back, on a fixed schedule. Each event carries ``time.time_ns()`` taken just
before it is handed to the producer (in its ``oid``, which the webhook's ``OID`` carries);
the receiver subtracts it from ``time.time()`` at arrival (one machine, one clock). p50,
p99 and max are over every event of the phase, however late it arrives; CPU per webhook is
the service's CPU over the phase's publishing time divided by the webhooks that arrived in
that time (fewer than published when the service falls behind).

The Kafka floor is measured in phases of its own, after the service's and with the service
stopped: a bare aiokafka consumer (``bench.floor``, its own process, its own consumer
group, positioned at the end of the topic) reads events published at the same rates for
the same time and times each from its stamp to the moment ``getmany`` returned it: the
producer's linger, the ``acks=all`` round trip and the fetch, which no relay can go under.
It also POSTs each event on to the receivers as it is polled (the stamp alone, through the
service's HTTP client), and the receiver times those as it times the service's webhooks:
publication to receipt with nothing between the poll and the POST, the floor of the
service's own figure.
It does not run beside the service: on a 2-core machine its polling took a share of the
cores the service needs, and the service's p99 came out 1.2-1.6x higher at 500/s and 4-5x
at 2,000/s with it running than without (BENCHMARKS.md, twelfth round).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence

from bench.context import Context
from bench.events import PacedProducer
from bench.floor import FloorProcess
from bench.results import Latency
from bench.window import PROGRESS_EVERY
from bench.workload import Workload

WARMUP_RATE = 100


def quantile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank quantile (the smallest value with at least q of the values <= it)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


async def wait_received(work: Workload, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await work.receiver.stats()).count < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def latency_row(
    rate: int,
    published: int,
    samples: list[float],
    cpu_per_webhook: float,
    *,
    floor: list[float],
    floor_cpu: float,
    hop: Sequence[float] = (),
) -> Latency:
    """One rate's row: the service's latencies (ms) and CPU seconds per webhook, the
    floor's latencies to poll (ms) and CPU seconds over the phase (per event polled in the
    row), and the latencies to receipt of the floor's posts (ms)."""
    samples, floor, hop = sorted(samples), sorted(floor), sorted(hop)
    return Latency(
        label=f"{rate:,}/s",
        rate=rate,
        published=published,
        received=len(samples),
        p50_ms=quantile(samples, 0.5),
        p99_ms=quantile(samples, 0.99),
        max_ms=samples[-1] if samples else float("nan"),
        cpu_ms=1000.0 * cpu_per_webhook,
        floor_received=len(floor),
        floor_p50_ms=quantile(floor, 0.5),
        floor_p99_ms=quantile(floor, 0.99),
        floor_max_ms=floor[-1] if floor else float("nan"),
        floor_cpu_ms=1000.0 * floor_cpu / len(floor) if floor else float("nan"),
        hop_received=len(hop),
        hop_p50_ms=quantile(hop, 0.5),
        hop_p99_ms=quantile(hop, 0.99),
        hop_max_ms=hop[-1] if hop else float("nan"),
    )


async def run(ctx: Context) -> None:
    async with (
        Workload(ctx, "latency", delay=0.0, stamps=True) as work,
        PacedProducer(ctx.bootstrap, work.topic, work.mix) as producer,
    ):
        phases = await _service_phases(ctx, work, producer)
        floor_samples, floor_cpus = await _floor_phases(ctx, work, producer)
        stats = await work.receiver.stats(samples=True)
    for rate, count, cpu in phases:
        row = latency_row(
            rate,
            count,
            stats.samples.get(str(rate), []),
            cpu,
            floor=floor_samples.get(_floor_label(rate), []),
            floor_cpu=floor_cpus.get(rate, float("nan")),
            hop=stats.samples.get(_floor_label(rate), []),
        )
        ctx.results.latency.append(row)
        ctx.say(
            f"latency at {row.label}: p50 {row.p50_ms:.1f} ms, p99 {row.p99_ms:.1f} ms,"
            f" max {row.max_ms:.1f} ms ({row.received:,}/{count:,} received); Kafka floor"
            f" p50 {row.floor_p50_ms:.1f} ms, p99 {row.floor_p99_ms:.1f} ms,"
            f" max {row.floor_max_ms:.1f} ms ({row.floor_received:,} polled); its posts"
            f" p50 {row.hop_p50_ms:.1f} ms, p99 {row.hop_p99_ms:.1f} ms,"
            f" max {row.hop_max_ms:.1f} ms ({row.hop_received:,} received)"
        )


def _floor_label(rate: int) -> str:
    return f"floor{rate}"


async def _service_phases(
    ctx: Context, work: Workload, producer: PacedProducer
) -> list[tuple[int, int, float]]:
    """The service warmed up, then each rate in turn: (rate, published, CPU seconds per
    webhook that arrived in the phase). The service is stopped once every event arrived."""
    plan = ctx.plan
    relay = await work.service()
    await relay.relay.start()
    try:

        async def progress_routine() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY)
                stats = await work.receiver.stats()
                ctx.say(f"latency: {stats.count:,} webhooks received")

        progress = asyncio.create_task(progress_routine())
        try:
            ctx.say(f"latency: warm-up, {WARMUP_RATE}/s for {plan.latency_warmup:.0f} s")
            total = await producer.run("warmup", WARMUP_RATE, plan.latency_warmup)
            # The measured phases start with the service caught up.
            await wait_received(work, total, 120.0)
            phases: list[tuple[int, int, float]] = []
            for rate in plan.latency_rates:
                ctx.say(f"latency: {rate:,} events/s for {plan.latency_seconds:.0f} s")
                cpu = relay.relay.tree.cpu_seconds()
                arrived = (await work.receiver.stats()).count
                count = await producer.run(str(rate), rate, plan.latency_seconds)
                relay.relay.check_alive()
                cpu = relay.relay.tree.cpu_seconds() - cpu
                arrived = (await work.receiver.stats()).count - arrived
                phases.append((rate, count, cpu / max(arrived, 1)))
                total += count
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        await wait_received(work, total, 60.0)
    finally:
        await relay.relay.stop()
    return phases


async def _floor_phases(
    ctx: Context, work: Workload, producer: PacedProducer
) -> tuple[dict[str, list[float]], dict[int, float]]:
    """The Kafka floor alone at each rate, posting each event on to the receivers: its
    samples by label and its CPU seconds by rate (the receiver keeps its posts' samples)."""
    plan = ctx.plan
    floor = FloorProcess(
        ctx.bootstrap, work.topic, f"bench-{work.run_id}-floor", post=work.receiver.urls
    )
    await floor.start(ctx.log_dir / f"latency-{work.run_id}-floor.log")
    samples: dict[str, list[float]] | None = None
    try:
        ctx.say(f"latency: Kafka floor alone, warm-up for {plan.latency_warmup:.0f} s")
        await producer.run("floorwarmup", WARMUP_RATE, plan.latency_warmup)
        cpus: dict[int, float] = {}
        for rate in plan.latency_rates:
            ctx.say(
                f"latency: Kafka floor alone, {rate:,} events/s for {plan.latency_seconds:.0f} s"
            )
            cpu = floor.tree.cpu_seconds()
            await producer.run(_floor_label(rate), rate, plan.latency_seconds)
            cpus[rate] = floor.tree.cpu_seconds() - cpu
        await asyncio.sleep(1.0)  # the last events' polls and posts
        samples = await floor.stop()
    finally:
        if samples is None:
            await floor.kill()
    return samples, cpus
