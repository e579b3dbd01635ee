"""The measured window of one relay run, and what the relay used in it.

A tick every 100 ms reads the relay's process tree CPU, then:

- **start**: the first tick at which the relay has consumed an event: the service's
  ``itep_events_consumed_total`` on ``/metrics`` is above 0, or (for relays without
  metrics, and as a fallback) the receivers have seen a webhook. The CPU read at that tick
  is the window's start value, so start-up (imports, connecting, joining the group) is left
  out.
- **end**, ``commits``: the first tick at which the relay's consumer group has committed
  every event (the sum of its committed offsets, read with
  ``AIOKafkaAdminClient.list_consumer_group_offsets``, reaches the events published).
  ``arrivals``: the first tick at which the receivers have counted every webhook (for a
  relay that commits before the work, where commits say nothing about delivery).
- or the cap: the window is cut at ``cap`` seconds, and counts what was committed (or
  received) by then.

Webhooks per second = events committed (or webhooks received) in the window / its length;
CPU per webhook = the tree's CPU over the window / those webhooks. Both ends are known to
within a tick (0.1 s). With ``memory_every`` the tree's resident memory is sampled too.
``machine_busy`` is how many of the machine's cores were busy on average over the window
(every process: the relay, the receivers, the broker, Postgres and anything else running),
from ``/proc/stat``: it tells a relay held back by its own work from one held back by a
machine with no core left.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp

from bench.receiver import ReceiverProcess
from bench.stack import Kafka, RelayProcess

TICK = 0.1
PROGRESS_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Window:
    webhooks: int
    seconds: float
    cpu_seconds: float
    drained: bool
    peak_rss_kb: int = 0
    peak_hwm_kb: int = 0
    machine_busy: float = math.nan  # cores busy on average over the window, all processes

    @property
    def rate(self) -> float:
        return self.webhooks / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per webhook."""
        return 1000.0 * self.cpu_seconds / self.webhooks if self.webhooks else float("nan")


def machine_ticks(stat: str = "/proc/stat") -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from the first line of ``stat``.

    Idle and iowait are the idle ticks; guest time is already inside user and nice. Steal
    (time a virtual machine's host gave to other guests) counts as busy: the core was not
    this machine's to use.
    """
    with Path(stat).open() as file:
        fields = [int(value) for value in file.readline().split()[1:9]]
    total = sum(fields)
    return total - fields[3] - fields[4], total


def busy_cores(start: tuple[int, int], end: tuple[int, int], cores: int | None = None) -> float:
    """Cores busy on average between two ``machine_ticks`` readings."""
    total = end[1] - start[1]
    if total <= 0:
        return math.nan
    return (cores or os.cpu_count() or 1) * (end[0] - start[0]) / total


async def measure(
    relay: RelayProcess,
    receiver: ReceiverProcess,
    kafka: Kafka,
    *,
    group: str,
    topic: str,
    target: int,
    cap: float,
    end: Literal["commits", "arrivals"],
    say: Callable[[str], None],
    memory_every: float | None = None,
    start_timeout: float = 120.0,
) -> Window:
    launched = time.monotonic()
    start = cpu_start = 0.0
    ticks_start = machine_ticks()
    done = 0
    peak_rss = peak_hwm = 0
    next_memory = next_progress = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            tick = time.monotonic()
            relay.check_alive()
            cpu = relay.tree.cpu_seconds()
            if memory_every is not None and tick >= next_memory:
                next_memory = tick + memory_every
                memory = relay.tree.memory()
                peak_rss = max(peak_rss, memory.rss_kb)
                peak_hwm = max(peak_hwm, memory.hwm_kb)
            if not start:
                arrived = (await receiver.stats()).count
                if arrived or await relay.consumed(session) > 0:
                    start, cpu_start = tick, cpu
                    ticks_start = machine_ticks()
                    next_progress = tick + PROGRESS_EVERY
                elif tick - launched > start_timeout:
                    raise RuntimeError(f"{relay.name} consumed nothing in {start_timeout:.0f} s")
            else:
                if end == "commits":
                    done = await kafka.committed(group, topic)
                else:
                    done = (await receiver.stats()).count
                elapsed = tick - start
                if done >= target or elapsed >= cap:
                    return Window(
                        webhooks=min(done, target),
                        seconds=elapsed,
                        cpu_seconds=cpu - cpu_start,
                        drained=done >= target,
                        peak_rss_kb=peak_rss,
                        peak_hwm_kb=peak_hwm,
                        machine_busy=busy_cores(ticks_start, machine_ticks()),
                    )
                if tick >= next_progress:
                    next_progress = tick + PROGRESS_EVERY
                    received = (await receiver.stats()).count
                    noun = "committed" if end == "commits" else "received"
                    say(
                        f"{relay.name}: {done:,}/{target:,} {noun}, {received:,} webhooks at the"
                        f" receivers, {elapsed:.0f} s"
                    )
            await _sleep_until(tick + TICK)


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))
