"""`make drills`: reliability drills against the real service on the local stack.

A benchmark-style runner, not a test suite: each drill runs the real service
(`python -m consumer run`, its own process, sometimes two of them) against receivers in a
separate process (scripts/drills_lib.py), publishes with `producers.publisher.EventPublisher`
to topics of its own, gives it a fresh database `drill_<uuid>`, breaks something on purpose,
reads the outcome topic and what the receivers saw, prints the figures and a pass/fail
verdict per check, and writes the results into RELIABILITY.md.

    python scripts/drills.py                     every drill, full size (about 20 minutes)
    python scripts/drills.py --quick             a smaller version of each
    python scripts/drills.py --only crash        one drill (repeatable, or comma-separated)
    python scripts/drills.py --list              the drills and what each does

The `isolation` drill is in scripts/drills_isolation.py. The `cluster-*` drills
(scripts/drills_cluster.py) need the three-broker cluster of
`make cluster-up`; when it is not up they are skipped with one line each.

Exit status 0 when every check of every drill run passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import logging
import os
import platform
import random
import re
import statistics
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from drills_cluster import CLUSTER_DRILLS, cluster_environment, cluster_unavailable
from drills_isolation import drill_isolation
from drills_lib import (
    ROOT,
    WORK_DIR,
    Arrival,
    DrillStack,
    LogSummary,
    OutcomeReader,
    PrivateKafka,
    PrivatePostgres,
    ReceiverClient,
    ServiceProc,
    breaker_lines,
    complete_event,
    first_arrivals,
    fmt_counter,
    free_port,
    load,
    parse_time,
    publish,
    stop_all,
    test_sequence,
    wait_until,
)

from consumer import __version__ as service_version
from consumer.errors import InvalidEvent
from consumer.events import parse_event
from consumer.settings import parse_schedule

REPORT = ROOT / "RELIABILITY.md"
CLOCK_SLACK = 0.050  # seconds: the receiver and the service read the same wall clock
KILL_SLACK = 1.0  # seconds: how late the receiver may stamp a request sent before a SIGKILL
HOLD_REASONS = frozenset(
    {"endpoint_busy", "circuit_open", "earlier_delivery_pending", "tracking_code_paused"}
)
WAITING_LINES = (
    "schedule_unavailable",
    "schedule_recovered",
    "tracking_store_unavailable",
    "tracking_store_recovered",
    "publish_failed",
    "poll_failed",
    "commit_failed",
    "lag_unknown",
)


# ------------------------------------------------------------------------- results


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Result:
    name: str
    mode: str
    started: datetime
    figures: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    quotes: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: str = ""
    load_after: str = ""
    key: str = ""  # one line for the summary table

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def fig(self, label: str, value: object) -> None:
        self.figures.append((label, str(value)))
        print(f"    {label}: {value}", flush=True)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))
        print(f"    [{'PASS' if passed else 'FAIL'}] {name}: {detail}", flush=True)

    def quote(self, what: str, line: str) -> None:
        if line:
            self.quotes.append((what, line))


@dataclass
class Ctx:
    quick: bool
    bootstrap: str
    admin_dsn: str
    receiver: ReceiverClient
    logs: Path

    def say(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def log_path(self, stack: DrillStack, name: str) -> Path:
        return self.logs / f"{stack.run}-{name}.log"


DrillFn = Callable[[Ctx, Result], Awaitable[None]]


@dataclass(frozen=True)
class Drill:
    name: str
    title: str
    what: str
    quick: str
    bound: float  # seconds: the whole drill is cancelled after this
    run: DrillFn
    cluster: bool = False  # needs the three-broker cluster of `make cluster-up`


def receipts(arrivals: Iterable[Arrival], ports: set[int] | None = None) -> Counter[str]:
    return Counter(a.webhook_id for a in arrivals if ports is None or a.port in ports)


def is_attempt(doc: dict[str, Any]) -> bool:
    """An outcome that follows a real HTTP attempt (not a hold)."""
    if doc["outcome"] in ("delivered", "failed"):
        return doc.get("reason") != "internal_error"
    return doc["outcome"] == "retry_scheduled" and doc.get("reason") not in HOLD_REASONS


@dataclass
class Timing:
    early_arrivals: int = 0
    early_outcomes: int = 0
    checked_arrivals: int = 0
    checked_outcomes: int = 0
    min_margin: float | None = None  # arrival minus the next_attempt_at announced before it
    worst: str = ""


def schedule_timing(
    reader: OutcomeReader, firsts: dict[str, Arrival], event_ids: Iterable[str]
) -> Timing:
    """Did anything happen before the retry_scheduled outcome before it said it would?

    For each event: its first arrival at the receiver against the ``next_attempt_at`` of
    the last ``retry_scheduled`` outcome before its first final outcome; and every outcome
    against the ``next_attempt_at`` of the ``retry_scheduled`` just before it.
    """
    timing = Timing()
    for event_id in event_ids:
        docs = reader.by_event.get(event_id, [])
        final_at = next((i for i, d in enumerate(docs) if d["outcome"] != "retry_scheduled"), None)
        before = docs if final_at is None else docs[:final_at]
        announced = [d for d in before if d["outcome"] == "retry_scheduled"]
        arrival = firsts.get(event_id)
        if announced and arrival is not None:
            due = parse_time(announced[-1]["next_attempt_at"])
            if due is not None:
                timing.checked_arrivals += 1
                margin = arrival.at - due
                if timing.min_margin is None or margin < timing.min_margin:
                    timing.min_margin = margin
                    timing.worst = event_id
                if margin < -CLOCK_SLACK:
                    timing.early_arrivals += 1
        for prev, nxt in itertools.pairwise(docs):
            if prev["outcome"] != "retry_scheduled":
                continue
            due = parse_time(prev["next_attempt_at"])
            recorded = parse_time(nxt["recorded_at"])
            if due is None or recorded is None:
                continue
            timing.checked_outcomes += 1
            if recorded < due - CLOCK_SLACK:
                timing.early_outcomes += 1
    return timing


# --------------------------------------------------------------------------- outage


async def drill_outage(ctx: Ctx, r: Result) -> None:
    count = 500 if ctx.quick else 2_000
    outage = 30.0 if ctx.quick else 100.0
    schedule = "2s,5s,10s,30s" if ctx.quick else "2s,10s,60s,120s"
    steps = parse_schedule(schedule)
    port = free_port()
    stack = await DrillStack.create("outage", ctx.bootstrap, ctx.admin_dsn)
    service = reader = None
    up_task: asyncio.Task[float] | None = None
    try:
        await stack.add_code("OUTAGE", f"http://127.0.0.1:{port}/hook")
        events = [complete_event(f"O{i // 2:06d}", "OUTAGE") for i in range(count)]
        ids = [e.event_id for e in events]
        await publish(stack.bootstrap, stack.events_topic, events)
        await ctx.receiver.reset()
        reader = OutcomeReader(stack.bootstrap, stack.outcomes_topic)
        await reader.start()
        log = ctx.log_path(stack, "service")
        service = await ServiceProc.launch("service", stack.env(RETRY_SCHEDULE=schedule), log)
        t0 = time.time()

        async def bring_up() -> float:
            await asyncio.sleep(max(0.0, t0 + outage - time.time()))
            return await ctx.receiver.open(port, "ok")

        up_task = asyncio.create_task(bring_up())
        bound = outage + sum(steps) * 1.2 + 120
        done = await wait_until(
            lambda: reader.final_count(ids) >= count,
            bound,
            every=0.5,
            tick=lambda: ctx.say(
                f"  t+{time.time() - t0:.0f}s: {reader.final_count(ids):,}/{count:,} final outcomes"
            ),
            tick_every=10,
        )
        bound_at = await up_task if up_task.done() else None
        arrivals = list(await ctx.receiver.arrivals())
        await service.stop()
        logs = LogSummary.read([log])
    finally:
        if up_task is not None and not up_task.done():
            up_task.cancel()
        await stop_all(service, reader)
        await stack.close()
        with contextlib.suppress(Exception):
            await ctx.receiver.close_port(port)
    assert reader is not None
    firsts = first_arrivals(arrivals, {port})
    got = receipts(arrivals, {port})
    finals = Counter(
        f"{d['outcome']}/{d['reason']}" if d["reason"] else d["outcome"]
        for e in ids
        for d in reader.by_event.get(e, [])
        if d["outcome"] != "retry_scheduled"
    )
    reasons = Counter(
        d["reason"]
        for e in ids
        for d in reader.by_event.get(e, [])
        if d["outcome"] == "retry_scheduled"
    )
    attempts = Counter(
        d["attempt"] for e in ids for d in reader.by_event.get(e, []) if d["outcome"] == "delivered"
    )
    never_retried = sum(
        1
        for e in ids
        if not any(d["outcome"] == "retry_scheduled" for d in reader.by_event.get(e, []))
    )
    timing = schedule_timing(reader, firsts, ids)
    last = max((a.at for a in firsts.values()), default=t0)
    r.fig("events", f"{count:,} Complete events, one tracking code, 2 events per test id")
    r.fig("RETRY_SCHEDULE", schedule)
    r.fig(
        "receiver",
        f"nothing listening for {outage:.0f} s, bound at t+{(bound_at or 0) - t0:.1f} s"
        if bound_at
        else "never bound (the drill ran out of time first)",
    )
    if firsts:
        r.fig(
            "arrivals",
            f"first at t+{min(a.at for a in firsts.values()) - t0:.1f} s, last at t+{last - t0:.1f} s",
        )
    r.fig("final outcomes", fmt_counter(finals))
    r.fig("retry_scheduled reasons", fmt_counter(reasons))
    r.fig(
        "HTTP attempts per delivered event",
        fmt_counter(Counter({f"{k}": v for k, v in sorted(attempts.items())})),
    )
    r.fig("breaker log lines", breaker_lines(logs))
    r.fig(
        "earliest arrival against its announced next_attempt_at",
        f"{timing.min_margin * 1000:+.0f} ms" if timing.min_margin is not None else "n/a",
    )
    r.fig("webhooks received more than once", sum(1 for n in got.values() if n > 1))
    r.check(
        "every webhook arrives",
        done and len(firsts) == count,
        f"{len(firsts):,}/{count:,} event ids arrived",
    )
    r.check("zero failed", not any(k.startswith("failed") for k in finals), fmt_counter(finals))
    one_delivered = sum(
        1
        for e in ids
        if [d["outcome"] for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"]
        == ["delivered"]
    )
    r.check(
        "exactly one final outcome per event, delivered",
        one_delivered == count,
        f"{one_delivered:,}/{count:,}",
    )
    r.check(
        "the outage was real: every event was retried at least once",
        never_retried == 0 and bool(bound_at),
        f"{never_retried:,} events delivered without a retry_scheduled before",
    )
    r.check(
        "no attempt arrives before the next_attempt_at announced before it (50 ms slack)",
        timing.early_arrivals == 0 and timing.checked_arrivals == count,
        f"{timing.early_arrivals} early of {timing.checked_arrivals:,} arrivals checked",
    )
    r.check(
        "no outcome is recorded before the next_attempt_at announced before it",
        timing.early_outcomes == 0 and timing.checked_outcomes > 0,
        f"{timing.early_outcomes} early of {timing.checked_outcomes:,} consecutive outcome pairs",
    )
    r.key = f"{len(firsts):,}/{count:,} delivered after a {outage:.0f} s outage, {finals.get('failed/retries_exhausted', 0)} failed, {timing.early_arrivals} early"


async def drill_outage_beyond(ctx: Ctx, r: Result) -> None:
    count = 300 if ctx.quick else 1_000
    schedule = "1s,2s,4s"
    port = free_port()
    stack = await DrillStack.create("beyond", ctx.bootstrap, ctx.admin_dsn)
    service = reader = None
    try:
        await stack.add_code("DOWN", f"http://127.0.0.1:{port}/hook")
        events = [complete_event(f"D{i:06d}", "DOWN") for i in range(count)]
        ids = [e.event_id for e in events]
        await publish(stack.bootstrap, stack.events_topic, events)
        await ctx.receiver.reset()
        reader = OutcomeReader(stack.bootstrap, stack.outcomes_topic)
        await reader.start()
        log = ctx.log_path(stack, "service")
        service = await ServiceProc.launch("service", stack.env(RETRY_SCHEDULE=schedule), log)
        t0 = time.time()
        all_failed = await wait_until(
            lambda: reader.final_count(ids) >= count,
            180,
            every=0.5,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{count:,} final outcomes"),
        )
        t_failed = time.time()
        await asyncio.sleep(2.0)  # a final outcome is published just before its row goes dead

        async def dead_rows() -> bool:
            return (await stack.schedule_counts()).get("dead", 0) >= count

        await wait_until(dead_rows, 20, every=0.5)
        before = await stack.schedule_counts()
        finals_before = {
            e: [d for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"]
            for e in ids
        }
        arrived_down = len(await ctx.receiver.arrivals())
        bound_at = await ctx.receiver.open(port, "ok")
        command = [
            str(Path(sys.executable).with_name("itep-webhooks")),
            "deliveries",
            "replay",
            "--all",
        ]
        if not Path(command[0]).exists():
            command = [sys.executable, "-m", "consumer", "deliveries", "replay", "--all"]
        replay = await asyncio.create_subprocess_exec(
            *command,
            env={**os.environ, "DATABASE_URL": stack.database_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        replay_out, _ = await asyncio.wait_for(replay.communicate(), 60)
        replay_text = replay_out.decode("utf-8", "replace").strip()
        t_replay = time.time()
        seen: dict[str, Arrival] = {}

        async def redelivered() -> bool:
            seen.update(first_arrivals(await ctx.receiver.arrivals(), {port}))
            delivered = sum(
                1
                for e in ids
                if any(d["outcome"] == "delivered" for d in reader.by_event.get(e, []))
            )
            return len(seen) >= count and delivered >= count

        all_delivered = await wait_until(
            redelivered,
            180,
            every=0.5,
            tick=lambda: ctx.say(f"  after replay: {len(seen):,}/{count:,} webhooks"),
        )
        t_delivered = time.time()

        async def emptied() -> bool:
            counts = await stack.schedule_counts()
            return counts == {"pending": 0, "dead": 0}

        await wait_until(emptied, 20, every=0.5)
        after = await stack.schedule_counts()
        arrivals = list(await ctx.receiver.arrivals())
        await service.stop()
        logs = LogSummary.read([log])
    finally:
        await stop_all(service, reader)
        await stack.close()
        with contextlib.suppress(Exception):
            await ctx.receiver.close_port(port)
    assert reader is not None
    one_failed = sum(
        1
        for e in ids
        if [(d["outcome"], d["reason"]) for d in finals_before[e]]
        == [("failed", "retries_exhausted")]
    )
    attempts = Counter(d["attempt"] for e in ids for d in finals_before[e])
    reasons = Counter(
        d["reason"]
        for e in ids
        for d in reader.by_event.get(e, [])
        if d["outcome"] == "retry_scheduled"
    )
    sequence_ok = sum(
        1
        for e in ids
        if [d["outcome"] for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"]
        == ["failed", "delivered"]
    )
    got = receipts(arrivals, {port})
    early = sum(1 for a in arrivals if a.at < bound_at)
    r.fig("events", f"{count:,} Complete events, one tracking code, one event per test id")
    r.fig("RETRY_SCHEDULE", schedule)
    r.fig("all final outcomes after", f"{t_failed - t0:.1f} s (receiver still down)")
    r.fig("HTTP attempts recorded on the failed outcome", fmt_counter(attempts))
    r.fig("retry_scheduled reasons (whole run)", fmt_counter(reasons))
    r.fig("schedule before replay", before)
    r.fig(
        "replay",
        f"`{' '.join(['itep-webhooks', *command[-3:]])}` -> exit {replay.returncode}: {replay_text}",
    )
    r.fig("every webhook arrived", f"{t_delivered - t_replay:.1f} s after the replay")
    r.fig("schedule at the end", after)
    r.fig("breaker log lines", breaker_lines(logs))
    r.fig("webhooks received more than once", sum(1 for n in got.values() if n > 1))
    r.check(
        "exactly one failed (retries_exhausted) per event while the receiver is down",
        all_failed and one_failed == count,
        f"{one_failed:,}/{count:,}",
    )
    r.check(
        "nothing reached the receiver while it was down",
        arrived_down == 0 and early == 0,
        f"{arrived_down} requests",
    )
    r.check("every failed delivery kept as a dead row", before.get("dead", 0) == count, f"{before}")
    r.check(
        "replay --all succeeds",
        replay.returncode == 0
        and f"replayed {count:,}".replace(",", "") in replay_text.replace(",", ""),
        replay_text,
    )
    r.check(
        "every webhook arrives after the replay",
        all_delivered and len(seen) == count,
        f"{len(seen):,}/{count:,}",
    )
    r.check(
        "each event's final outcomes are failed, then delivered",
        sequence_ok == count,
        f"{sequence_ok:,}/{count:,}",
    )
    r.check(
        "the schedule is empty at the end",
        after == {"pending": 0, "dead": 0},
        f"{after}",
    )
    r.key = f"{one_failed:,}/{count:,} failed once, replay -> {len(seen):,}/{count:,} delivered"


# ---------------------------------------------------------------------------- crash


async def drill_crash(ctx: Ctx, r: Result) -> None:
    count = 5_000 if ctx.quick else 20_000
    kills = 3 if ctx.quick else 8
    schedule = "1s,1s,2s,2s,4s,4s"
    lease = 6.0
    bound = lease + 1.0 + 10.0  # a pending row may be this overdue: lease + poll + margin
    port = free_port()
    await ctx.receiver.open(port, "flaky", fail_ratio=0.3, seed=20261202)
    stack = await DrillStack.create("crash", ctx.bootstrap, ctx.admin_dsn)
    service = reader = None
    logs_paths: list[Path] = []
    kill_log: list[tuple[int, float]] = []
    ready_times: list[float] = []
    uncommitted_delivered: list[set[str]] = []
    kill_walls: list[float] = []
    try:
        await stack.add_code("CRASH", f"http://127.0.0.1:{port}/hook")
        events = [complete_event(f"C{i // 2:06d}", "CRASH") for i in range(count)]
        ids = [e.event_id for e in events]
        placed = await publish(stack.bootstrap, stack.events_topic, events)
        where = {e.event_id: (d.partition, d.offset) for e, d in zip(events, placed, strict=True)}
        await ctx.receiver.reset()
        reader = OutcomeReader(stack.bootstrap, stack.outcomes_topic)
        await reader.start()
        env = stack.env(RETRY_SCHEDULE=schedule, SCHEDULE_LEASE=f"{lease:.0f}s")
        t0 = time.monotonic()

        async def launch() -> ServiceProc:
            path = ctx.log_path(stack, f"service-{len(logs_paths) + 1}")
            logs_paths.append(path)
            started = time.monotonic()
            proc = await ServiceProc.launch("service", env, path)
            ready_times.append(time.monotonic() - started)
            return proc

        service = await launch()
        while len(kill_log) < kills:
            threshold = count * (len(kill_log) + 1) / (kills + 1)
            ready_at = time.monotonic()
            current = service
            reached = await wait_until(
                lambda: reader.final_count(ids) >= threshold and time.monotonic() - ready_at >= 2,
                300,
                every=0.1,
                tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{count:,} final outcomes"),
            )
            if not reached or not current.alive:
                r.notes.append(
                    f"kill {len(kill_log) + 1} not reached: progress stalled at "
                    f"{reader.final_count(ids):,} (service alive: {current.alive})"
                )
                break
            progress = reader.final_count(ids)
            await current.kill()
            kill_log.append((progress, time.monotonic() - t0))
            kill_walls.append(time.time())
            # What a restart must redo: events delivered (200) at or past the committed
            # offset of their partition at the moment of the kill.
            committed = await stack.committed()
            answered = {a.webhook_id for a in await ctx.receiver.arrivals() if a.answer == 200}
            uncommitted_delivered.append(
                {e for e in answered if e in where and where[e][1] >= committed.get(where[e][0], 0)}
            )
            ctx.say(f"  SIGKILL {len(kill_log)} at {progress:,}/{count:,} final outcomes")
            service = await launch()
        all_final = await wait_until(
            lambda: reader.final_count(ids) >= count,
            300,
            every=0.5,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{count:,} final outcomes"),
        )
        t_final = time.monotonic() - t0

        drained = await wait_until(
            stack.empty_schedule, sum(parse_schedule(schedule)) + lease + 60, every=0.5
        )
        rows = await stack.fetch(
            "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, "
            "count(*) FILTER (WHERE state = 'pending' AND due_at < now() - make_interval(secs => $1))"
            " AS overdue, count(*) FILTER (WHERE state = 'dead') AS dead, "
            "coalesce(array_agg(event_id) FILTER (WHERE state = 'dead'), '{}') AS dead_ids "
            "FROM scheduled_deliveries",
            bound,
        )
        await asyncio.sleep(1.0)
        arrivals = list(await ctx.receiver.arrivals())
        await service.stop()
    finally:
        await stop_all(service, reader)
        await stack.close()
        await ctx.receiver.close_port(port)
    assert reader is not None
    state = rows[0]
    dead_ids = set(state["dead_ids"])
    logs = LogSummary.read(logs_paths)
    got = Counter(a.webhook_id for a in arrivals)
    ok = Counter(a.webhook_id for a in arrivals if a.answer == 200)
    finals = {
        e: [d for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"] for e in ids
    }
    without_final = [e for e in ids if not finals[e]]
    last_not_final = [
        e
        for e in ids
        if reader.by_event.get(e) and reader.by_event[e][-1]["outcome"] == "retry_scheduled"
    ]
    multi_final = [e for e in ids if len(finals[e]) > 1]
    delivered = {e for e in ids if any(d["outcome"] == "delivered" for d in finals[e])}
    failed = {e for e in ids if finals[e] and all(d["outcome"] == "failed" for d in finals[e])}
    kinds = Counter(
        f"{d['outcome']}/{d['reason']}" if d["reason"] else d["outcome"]
        for e in ids
        for d in finals[e]
    )
    ok_without_outcome = [e for e in ids if ok.get(e) and e not in delivered]
    outcome_without_ok = [e for e in delivered if not ok.get(e)]
    failed_not_dead = [e for e in failed if e not in dead_ids]
    duplicate_ok = {e: n for e, n in ok.items() if n > 1}
    answers = Counter(a.answer for a in arrivals)
    predicted = set().union(*uncommitted_delivered) if uncommitted_delivered else set()
    dup_predicted = duplicate_ok.keys() & predicted
    dup_other = duplicate_ok.keys() - predicted
    ok_times: dict[str, list[float]] = {}
    for a in arrivals:
        if a.answer == 200:
            ok_times.setdefault(a.webhook_id, []).append(a.at)
    # Two copies answered 200 with no SIGKILL between them: a duplicate without a crash. The
    # receiver stamps a request when its handler runs, which on a loaded machine can be a
    # little after the sender was killed: a copy stamped up to KILL_SLACK after a kill may
    # come from the killed process.
    no_crash_between = [
        e
        for e, times in ok_times.items()
        for first, second in itertools.pairwise(sorted(times))
        if not any(first - KILL_SLACK <= k <= second for k in kill_walls)
    ]
    # A 200 whose outcome was never published: the process died between the two (a kill
    # within KILL_SLACK of the 200), and the event was attempted again, ending otherwise.
    ok_without_outcome_unexplained = [
        e
        for e in ok_without_outcome
        if not any(t - KILL_SLACK <= k <= t + KILL_SLACK for t in ok_times[e] for k in kill_walls)
    ]
    r.fig("events", f"{count:,} Complete events, 2 per test id, one tracking code")
    r.fig("endpoint", "answers 503 to 30% of requests at random (seeded), 200 otherwise")
    r.fig("RETRY_SCHEDULE / SCHEDULE_LEASE", f"{schedule} / {lease:.0f}s")
    r.fig(
        "SIGKILLs (final outcomes at the kill, seconds since start)",
        "; ".join(f"{p:,} at {t:.0f} s" for p, t in kill_log) or "none",
    )
    r.fig(
        "start to /readyz per incarnation",
        f"mean {statistics.mean(ready_times):.1f} s, max {max(ready_times):.1f} s"
        if ready_times
        else "n/a",
    )
    r.fig("all final outcomes after", f"{t_final:.0f} s")
    r.fig("final outcomes (with duplicates)", fmt_counter(kinds))
    r.fig("requests at the receiver", f"{sum(got.values()):,} ({fmt_counter(answers)})")
    r.fig(
        "duplicate webhooks (answered 200 more than once)",
        f"{len(duplicate_ok):,} event ids, {sum(n - 1 for n in duplicate_ok.values()):,} extra copies",
    )
    r.fig(
        "delivered but not yet committed at the kills (per kill)",
        ", ".join(f"{len(x):,}" for x in uncommitted_delivered) or "n/a",
    )
    r.fig(
        "duplicate webhooks explained by uncommitted offsets / not explained",
        f"{len(dup_predicted):,} / {len(dup_other):,}",
    )
    r.fig(
        "duplicate final outcomes",
        f"{len(multi_final):,} events with more than one final outcome",
    )
    r.fig(
        "schedule at the end",
        f"pending {state['pending']}, overdue by more than {bound:.0f} s {state['overdue']}, dead {state['dead']}",
    )
    r.fig(
        "service log lines",
        f"event_handling_crashed {logs.counts.get('event_handling_crashed', 0)}, scheduled_delivery_crashed {logs.counts.get('scheduled_delivery_crashed', 0)}, error-level lines {logs.levels.get('error', 0)}",
    )
    r.check(
        f"{kills} SIGKILLs during the run, each restarted",
        len(kill_log) == kills and all(p < count for p, _ in kill_log),
        f"{len(kill_log)} kills at {[p for p, _ in kill_log]}",
    )
    r.check(
        "zero trigger events without a final outcome",
        all_final and not without_final,
        f"{len(without_final):,} without (e.g. {without_final[:3]})",
    )
    r.check(
        "zero scheduled retries lost: no event ends on retry_scheduled",
        not last_not_final,
        f"{len(last_not_final):,} events whose last outcome is retry_scheduled",
    )
    r.check(
        f"no pending row overdue by more than {bound:.0f} s at the end",
        drained and state["overdue"] == 0 and state["pending"] == 0,
        f"pending {state['pending']}, overdue {state['overdue']}",
    )
    r.check(
        "every webhook answered 200 has a delivered outcome (unless a SIGKILL came between "
        "the two), and the reverse",
        not ok_without_outcome_unexplained and not outcome_without_ok,
        f"{len(ok_without_outcome)} answered without a delivered outcome "
        f"({len(ok_without_outcome) - len(ok_without_outcome_unexplained)} of them at a SIGKILL),"
        f" {len(outcome_without_ok)} delivered without a 200",
    )
    r.check(
        "duplicates only across a crash: no webhook answered 200 twice without a SIGKILL between",
        not no_crash_between,
        f"{len(no_crash_between)} copies (e.g. {no_crash_between[:3]})",
    )
    r.check(
        "every failed event failed for retries_exhausted and is kept dead",
        not failed_not_dead
        and all(d["reason"] == "retries_exhausted" for e in failed for d in finals[e]),
        f"{len(failed)} failed, {len(failed_not_dead)} without a dead row",
    )
    r.key = (
        f"{len(kill_log)} kills; {len(without_final)} without final; {len(duplicate_ok):,} dup webhooks,"
        f" {len(multi_final):,} dup finals"
    )


# -------------------------------------------------------------------------- restarts


async def drill_restarts(ctx: Ctx, r: Result) -> None:
    workdir = WORK_DIR / f"stack-{uuid.uuid4().hex[:8]}"
    pg = PrivatePostgres(workdir)
    kafka = PrivateKafka(workdir)
    reason = kafka.unavailable() or pg.unavailable()
    if reason:
        r.check("a private Kafka and Postgres can be started", False, reason)
        return
    try:
        await pg.start()
        kafka_start = await kafka.start()
        r.fig(
            "private stack",
            f"Kafka on {kafka.bootstrap} (ready in {kafka_start:.0f} s), Postgres on "
            f"127.0.0.1:{pg.port}, under {workdir.relative_to(ROOT)}",
        )
        for target in ("postgres", "kafka"):
            await restart_run(ctx, r, target, kafka, pg)
    finally:
        await kafka.close()
        await pg.close()


async def restart_run(
    ctx: Ctx, r: Result, target: str, kafka: PrivateKafka, pg: PrivatePostgres
) -> None:
    count = 2_000 if ctx.quick else 5_000
    schedule = "1s,2s,4s,8s,16s"
    down = 5.0 if target == "postgres" else 10.0
    ctx.say(f"restart run: {target}")
    port = free_port()
    await ctx.receiver.open(port, "flaky", fail_ratio=0.2, delay=0.02, seed=7)
    stack = await DrillStack.create(f"restart-{target}", kafka.bootstrap, pg.dsn)
    service = reader = None
    try:
        await stack.add_code("FLAKY", f"http://127.0.0.1:{port}/hook")
        events = [complete_event(f"R{i // 2:06d}", "FLAKY") for i in range(count)]
        ids = [e.event_id for e in events]
        await publish(stack.bootstrap, stack.events_topic, events)
        await ctx.receiver.reset()
        reader = OutcomeReader(stack.bootstrap, stack.outcomes_topic)
        await reader.start()
        log = ctx.log_path(stack, "service")
        service = await ServiceProc.launch("service", stack.env(RETRY_SCHEDULE=schedule), log)
        pid = service.pid
        t0 = time.time()
        await wait_until(lambda: reader.final_count(ids) >= count * 0.3, 120, every=0.1)
        at_progress = reader.final_count(ids)
        t_down = time.time()
        if target == "postgres":
            await pg.stop()
            await asyncio.sleep(down)
            t_start = time.time()
            await pg.start()
        else:
            await kafka.stop()
            await asyncio.sleep(down)
            t_start = time.time()
            await kafka.start()
        t_up = time.time()
        ctx.say(f"  {target} down {t_start - t_down:.1f} s, back after {t_up - t_down:.1f} s")
        all_final = await wait_until(
            lambda: reader.final_count(ids) >= count,
            300,
            every=0.5,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{count:,} final outcomes"),
        )
        t_final = time.time()

        drained = await wait_until(stack.empty_schedule, 60, every=0.5)
        counts = await stack.schedule_counts()
        alive = service.alive and service.pid == pid
        ready = await service.is_ready()
        arrivals = list(await ctx.receiver.arrivals())
        await service.stop()
    finally:
        await stop_all(service, reader)
        await stack.close()
        await ctx.receiver.close_port(port)
    assert reader is not None
    logs = LogSummary.read([log])
    finals = {
        e: [d for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"] for e in ids
    }
    kinds = Counter(
        f"{d['outcome']}/{d['reason']}" if d["reason"] else d["outcome"]
        for e in ids
        for d in finals[e]
    )
    without_final = [e for e in ids if not finals[e]]
    bad_final = [
        e
        for e in ids
        if finals[e]
        and not any(
            d["outcome"] == "delivered"
            or (d["outcome"], d["reason"]) == ("failed", "retries_exhausted")
            for d in finals[e]
        )
    ]
    ok = Counter(a.webhook_id for a in arrivals if a.answer == 200)
    delivered = {e for e in ids if any(d["outcome"] == "delivered" for d in finals[e])}
    missing_webhook = [e for e in delivered if not ok.get(e)]
    times = sorted(a.at for a in arrivals)
    gap, gap_at = 0.0, 0.0
    for a, b in itertools.pairwise(times):
        if b - a > gap:
            gap, gap_at = b - a, a
    waiting = {name: logs.counts.get(name, 0) for name in WAITING_LINES}
    relevant = (
        ("schedule_unavailable", "tracking_store_unavailable")
        if target == "postgres"
        else ("publish_failed", "poll_failed", "commit_failed", "lag_unknown")
    )
    label = "Postgres restart" if target == "postgres" else "Kafka broker restart"
    r.fig(
        f"{label}: run",
        f"{count:,} events, endpoint 20% 503 + 20 ms, RETRY_SCHEDULE {schedule}; stopped at "
        f"{at_progress:,} final outcomes (t+{t_down - t0:.1f} s), down {t_start - t_down:.1f} s, "
        f"answering again {t_up - t_down:.1f} s after the stop",
    )
    r.fig(
        f"{label}: recovery",
        f"all final outcomes {t_final - t_up:.1f} s after it was back; longest gap between "
        f"webhook arrivals {gap:.1f} s (from t+{gap_at - t0:.1f} s)",
    )
    r.fig(f"{label}: final outcomes", fmt_counter(kinds))
    r.fig(
        f"{label}: log lines",
        ", ".join(f"{k} {v}" for k, v in waiting.items())
        + f"; non-JSON lines (aiokafka's own logging) {logs.counts.get('non_json', 0)}",
    )
    r.fig(
        f"{label}: duplicates",
        f"{sum(1 for n in ok.values() if n > 1):,} webhooks answered 200 more than once, "
        f"{sum(1 for e in ids if len(finals[e]) > 1):,} events with more than one final outcome",
    )
    for name in WAITING_LINES:
        r.quote(f"{label}: {name}", logs.quote(name))
    if logs.quote("non_json"):
        r.quote(f"{label}: first non-JSON line", logs.quote("non_json"))
    r.check(
        f"{label}: zero loss",
        all_final and not without_final and not bad_final and drained and not missing_webhook,
        f"{len(without_final)} without final outcome, {len(bad_final)} with an unexpected one, "
        f"schedule {counts}, {len(missing_webhook)} delivered without a 200 at the receiver",
    )
    r.check(
        f"{label}: recovered without help",
        alive and ready,
        f"same process (pid {pid}) {'alive' if alive else 'GONE'}, /readyz {'200' if ready else 'not 200'}",
    )
    r.check(
        f"{label}: the service said what it waited for",
        sum(waiting[n] for n in relevant) > 0,
        ", ".join(f"{n} {waiting[n]}" for n in relevant),
    )
    r.key = (r.key + "; " if r.key else "") + (
        f"{target}: {count - len(without_final):,}/{count:,} final, "
        f"{'recovered' if alive and ready else 'NOT recovered'}"
    )


# ------------------------------------------------------------------------- bad input


WRONG_TYPES: list[tuple[tuple[str, ...], Any]] = [
    (("duration_minutes",), "80"),
    (("test_id",), 12345),
    (("status",), 3),
    (("results",), "high"),
    (("occurred_at",), 1764000000),
    (("schema_version",), "1"),
    (("oid",), None),
    (("tracking_code",), 7),
    (("event_id",), ["x"]),
    (("finished_on",), 20261124),
    (("previous_status",), {"a": 1}),
    (("event_type",), True),
    (("results", "overall", "level"), "4.3"),
    (("results", "sections", "writing", "question_count"), 2.5),
    (("results", "sections"), []),
]
KINDS = (
    "truncated JSON",
    "wrong type",
    "1e400",
    "10**400",
    "10,000-level nesting",
    "invalid UTF-8",
    "not an object",
    "key is not the test id",
)


def malformed(count: int, rng: random.Random, tag: str) -> list[tuple[str, bytes | None, bytes]]:
    """``count`` invalid records (kind, key, value), the kinds in turn; the last one is a
    5 MB value. Each is checked to be refused by the consumer's own parser."""
    out: list[tuple[str, bytes | None, bytes]] = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        test_id = f"M{tag}{i:06d}"
        doc = complete_event(test_id, "VALID").to_document()
        doc["oid"] = "OIDMARK"
        key: bytes | None = test_id.encode()
        value = orjson.dumps(doc)
        if kind == "truncated JSON":
            value = value[: rng.randint(1, len(value) - 1)]
        elif kind == "wrong type":
            path, wrong = WRONG_TYPES[(i // len(KINDS)) % len(WRONG_TYPES)]
            target = doc
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = wrong
            value = orjson.dumps(doc)
            if path == ("test_id",):
                key = None
        elif kind == "1e400":
            value = value.replace(b'"duration_minutes":80', b'"duration_minutes":1e400')
        elif kind == "10**400":
            value = value.replace(b'"duration_minutes":80', b'"duration_minutes":1' + b"0" * 400)
        elif kind == "10,000-level nesting":
            if (i // len(KINDS)) % 2:
                value = b"[" * 10_000 + b"]" * 10_000
                key = None
            else:
                value = value[:-1] + b',"extra":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"
        elif kind == "invalid UTF-8":
            value = value.replace(b"OIDMARK", b"crm-\xc3\x28\xff\xfe")
        elif kind == "not an object":
            value = [b"[]", b'"Complete"', b"null", b"42", b"true"][(i // len(KINDS)) % 5]
            key = None
        else:
            key = b"another-test-id"
        out.append((kind, key, value))
    doc = complete_event(f"M{tag}huge", "VALID").to_document()
    doc["oid"] = "x" * (5 << 20)
    doc["duration_minutes"] = -1
    out[-1] = ("5 MB value", doc["test_id"].encode(), orjson.dumps(doc))
    for kind, key, value in out:
        try:
            parse_event(value, key)
        except InvalidEvent:
            continue
        raise RuntimeError(f"drill bug: a {kind!r} record is valid: {value[:200]!r}")
    return out


async def drill_bad_input(ctx: Ctx, r: Result) -> None:
    valid_n = 2_000 if ctx.quick else 10_000
    bad_n = 2_000 if ctx.quick else 10_000
    big = 8 << 20
    rng = random.Random(400)
    port = free_port()
    await ctx.receiver.open(port, "ok")
    stack = await DrillStack.create(
        "badinput", ctx.bootstrap, ctx.admin_dsn, topic_configs={"max.message.bytes": str(big)}
    )
    service = reader = None
    dlq: AIOKafkaConsumer | None = None
    producer: AIOKafkaProducer | None = None
    dead: dict[str, tuple[bytes | None, bytes | None, dict[str, bytes]]] = {}
    sent_bad: dict[str, tuple[str, bytes | None, bytes]] = {}
    valid_ids: set[str] = set()
    valid_sources: set[str] = set()
    rss_marks: dict[str, int] = {}
    exits: list[int | None] = []
    dlq_task: asyncio.Task[None] | None = None
    try:
        await stack.add_code("VALID", f"http://127.0.0.1:{port}/hook")
        await ctx.receiver.reset()
        reader = OutcomeReader(stack.bootstrap, stack.outcomes_topic)
        await reader.start()
        dlq = AIOKafkaConsumer(
            stack.dlq_topic,
            bootstrap_servers=stack.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            max_partition_fetch_bytes=big,
            fetch_max_bytes=2 * big,
        )
        await dlq.start()

        async def read_dlq() -> None:
            assert dlq is not None
            while True:
                batch = await dlq.getmany(timeout_ms=200)
                for records in batch.values():
                    for rec in records:
                        headers = dict(rec.headers)
                        source = headers.get("source", b"").decode()
                        dead[source] = (rec.key, rec.value, headers)

        dlq_task = asyncio.create_task(read_dlq())
        log = ctx.log_path(stack, "service")
        service = await ServiceProc.launch("service", stack.env(), log)
        await asyncio.sleep(3.0)
        rss_marks["start"] = service.rss_kb() or 0
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.bootstrap,
            acks="all",
            enable_idempotence=True,
            max_request_size=big,
            linger_ms=5,
        )
        await producer.start()
        for round_no in (1, 2):
            valid = [complete_event(f"V{round_no}{i:06d}", "VALID") for i in range(valid_n // 2)]
            bad = malformed(bad_n // 2, rng, str(round_no))
            mixed: list[tuple[str, bytes | None, bytes, str | None]] = [
                ("valid", e.key, e.encode().value, e.event_id) for e in valid
            ] + [(kind, key, value, None) for kind, key, value in bad]
            rng.shuffle(mixed)
            futures = [
                await producer.send(stack.events_topic, value=value, key=key)
                for _, key, value, _ in mixed
            ]
            metas = await asyncio.gather(*futures)
            for (kind, key, value, event_id), meta in zip(mixed, metas, strict=True):
                source = f"{meta.topic}/{meta.partition}/{meta.offset}"
                if event_id is None:
                    sent_bad[source] = (kind, key, value)
                else:
                    valid_ids.add(event_id)
                    valid_sources.add(source)
            ctx.say(
                f"  round {round_no}: published {len(valid):,} valid and {len(bad):,} malformed"
            )

            progress = [-1, time.monotonic()]

            def round_done() -> bool:
                valid_done = reader.final_count(valid_ids)
                dead_done = len(dead.keys() & sent_bad.keys())
                if valid_done + dead_done != progress[0]:
                    progress[:] = [valid_done + dead_done, time.monotonic()]
                if valid_done >= len(valid_ids) and dead_done >= len(sent_bad):
                    return True
                # Every valid one is done and nothing new for 20 s: the rest is not coming.
                return valid_done >= len(valid_ids) and time.monotonic() - progress[1] >= 20

            await wait_until(
                round_done,
                240,
                every=0.5,
                tick=lambda: ctx.say(
                    f"  {reader.final_count(valid_ids):,}/{len(valid_ids):,} valid final, "
                    f"{len(dead.keys() & sent_bad.keys()):,}/{len(sent_bad):,} dead-lettered"
                ),
            )
            await asyncio.sleep(3.0)
            rss_marks[f"after round {round_no}"] = service.rss_kb() or 0
            exits.append(service.process.returncode if service.process else None)
        await asyncio.sleep(2.0)
        rss_marks["end"] = service.rss_kb() or 0
        alive = service.alive
        arrivals = list(await ctx.receiver.arrivals())
        samples = list(service.rss)
        await service.stop()
    finally:
        if dlq_task is not None:
            dlq_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dlq_task
        if producer is not None:
            await producer.stop()
        if dlq is not None:
            await dlq.stop()
        await stop_all(service, reader)
        await stack.close()
        await ctx.receiver.close_port(port)
    assert reader is not None
    logs = LogSummary.read([log])
    missing = Counter(kind for source, (kind, _, _) in sent_bad.items() if source not in dead)
    by_kind = Counter(kind for kind, _, _ in sent_bad.values())
    no_error = [s for s in sent_bad if s in dead and not dead[s][2].get("error")]
    altered = [
        s
        for s, (_, key, value) in sent_bad.items()
        if s in dead and (dead[s][0], dead[s][1]) != (key, value)
    ]
    valid_dead = valid_sources & dead.keys()
    delivered = {
        e for e in valid_ids if any(d["outcome"] == "delivered" for d in reader.by_event.get(e, []))
    }
    arrived = set(first_arrivals(arrivals, {port}))
    rejected = sum(1 for d in reader.all_docs() if d["outcome"] == "rejected")
    peak = max((kb for _, kb in samples), default=0)
    start, after1, end = (
        rss_marks.get("start", 0),
        rss_marks.get("after round 1", 0),
        rss_marks.get("end", 0),
    )
    examples: dict[str, str] = {}
    for source, (kind, _, _) in sent_bad.items():
        if source in dead and kind not in examples:
            examples[kind] = dead[source][2].get("error", b"").decode("utf-8", "replace")[:160]
    r.fig(
        "records",
        f"{len(valid_ids):,} valid Complete events and {len(sent_bad):,} malformed, shuffled, in 2 rounds",
    )
    r.fig("malformed kinds", fmt_counter(by_kind))
    r.fig("topic max.message.bytes / producer max_request_size", f"{big:,} / {big:,}")
    r.fig(
        "dead-lettered",
        f"{len(dead.keys() & sent_bad.keys()):,}/{len(sent_bad):,}; missing by kind: {fmt_counter(missing)}",
    )
    r.fig("rejected outcomes (malformed with a readable event_id)", f"{rejected:,}")
    r.fig(
        "valid delivered",
        f"{len(delivered):,}/{len(valid_ids):,} (arrived {len(valid_ids & arrived):,})",
    )
    r.fig(
        "service VmRSS",
        f"start {start / 1024:.0f} MB, after round 1 {after1 / 1024:.0f} MB, peak {peak / 1024:.0f} MB,"
        f" end {end / 1024:.0f} MB ({len(samples)} samples, one a second)",
    )
    r.fig(
        "log lines",
        f"event_rejected {logs.counts.get('event_rejected', 0):,}, dead_letter_failed {logs.counts.get('dead_letter_failed', 0)}, event_handling_crashed {logs.counts.get('event_handling_crashed', 0)}",
    )
    for kind, text in sorted(examples.items()):
        r.fig(f"error header, {kind}", f"`{text}`")
    r.quote("bad-input: dead_letter_failed", logs.quote("dead_letter_failed"))
    r.check(
        "every malformed record dead-lettered",
        not missing,
        f"{sum(missing.values())} missing ({fmt_counter(missing)})",
    )
    r.check(
        "every dead letter has an error header and the bytes unchanged",
        not no_error and not altered,
        f"{len(no_error)} without error header, {len(altered)} altered",
    )
    r.check("no valid event dead-lettered", not valid_dead, f"{len(valid_dead)}")
    r.check(
        "every valid event delivered",
        delivered == valid_ids and valid_ids <= arrived,
        f"{len(delivered):,}/{len(valid_ids):,} delivered outcomes, {len(valid_ids & arrived):,} arrived",
    )
    r.check(
        "the process never exits",
        alive and all(code is None for code in exits),
        f"alive at the end: {alive}",
    )
    r.check(
        "memory flat: the second round grows VmRSS by at most 10% + 5 MB over the first",
        bool(after1) and end <= after1 * 1.10 + 5 * 1024,
        f"after round 1 {after1 / 1024:.1f} MB, end {end / 1024:.1f} MB",
    )
    r.check(
        "memory bounded: peak at most 100 MB above the start (20 x the largest record)",
        bool(start) and peak <= start + 100 * 1024,
        f"start {start / 1024:.1f} MB, peak {peak / 1024:.1f} MB",
    )
    r.key = (
        f"{len(dead.keys() & sent_bad.keys()):,}/{len(sent_bad):,} dead-lettered, "
        f"{len(delivered):,}/{len(valid_ids):,} delivered, RSS {start / 1024:.0f}/{peak / 1024:.0f}/{end / 1024:.0f} MB"
    )


# ------------------------------------------------------------------------- instances


async def drill_instances(ctx: Ctx, r: Result) -> None:
    tests = 100 if ctx.quick else 500
    outage = 20.0 if ctx.quick else 30.0
    schedule = "2s,4s,8s,20s" if ctx.quick else "2s,5s,10s,30s"
    steps = parse_schedule(schedule)
    port = free_port()
    stack = await DrillStack.create("instances", ctx.bootstrap, ctx.admin_dsn)
    services: list[ServiceProc] = []
    reader = None
    up_task: asyncio.Task[float] | None = None
    logs_paths = [ctx.log_path(stack, "instance-a"), ctx.log_path(stack, "instance-b")]
    try:
        await stack.add_code("INST", f"http://127.0.0.1:{port}/hook")
        sequences = [test_sequence(f"S{t:05d}", "INST") for t in range(tests)]
        # Event k of every test, then event k + 1 of every test: each test's events in order.
        stream = [seq[k] for k in range(4) for seq in sequences]
        order = {seq[0].test_id: [e.event_id for e in seq] for seq in sequences}
        ids = [e.event_id for e in stream]
        await ctx.receiver.reset()
        reader = OutcomeReader(stack.bootstrap, stack.outcomes_topic)
        await reader.start()
        # debug: each instance logs every webhook it delivers, counted per instance below.
        env = stack.env(RETRY_SCHEDULE=schedule, LOG_LEVEL="debug")
        services = list(
            await asyncio.gather(
                *(
                    ServiceProc.launch(f"instance-{n}", env, p)
                    for n, p in zip("ab", logs_paths, strict=True)
                )
            )
        )
        await asyncio.sleep(3.0)  # the group settles with both members
        await publish(stack.bootstrap, stack.events_topic, stream)
        t0 = time.time()

        async def bring_up() -> float:
            await asyncio.sleep(max(0.0, t0 + outage - time.time()))
            return await ctx.receiver.open(port, "ok")

        up_task = asyncio.create_task(bring_up())
        done = await wait_until(
            lambda: reader.final_count(ids) >= len(ids),
            outage + sum(steps) * 1.2 + 180,
            every=0.5,
            tick=lambda: ctx.say(
                f"  t+{time.time() - t0:.0f}s: {reader.final_count(ids):,}/{len(ids):,} final outcomes"
            ),
            tick_every=10,
        )
        bound_at = await up_task if up_task.done() else None
        t_done = time.time()
        await asyncio.sleep(1.0)
        arrivals = list(await ctx.receiver.arrivals())
        alive = [s.alive for s in services]
        for service in services:
            await service.stop()
    finally:
        if up_task is not None and not up_task.done():
            up_task.cancel()
        await stop_all(*services, reader)
        await stack.close()
        with contextlib.suppress(Exception):
            await ctx.receiver.close_port(port)
    assert reader is not None
    got = receipts(arrivals, {port})
    firsts = first_arrivals(arrivals, {port})
    twice = {e: n for e, n in got.items() if n > 1}
    finals = {
        e: [d for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"] for e in ids
    }
    one_delivered = sum(1 for e in ids if [d["outcome"] for d in finals[e]] == ["delivered"])
    out_of_order = []
    for test_id, expected in order.items():
        arrived = sorted((firsts[e].seq, e) for e in expected if e in firsts)
        if [e for _, e in arrived] != expected:
            out_of_order.append(test_id)
    attempt_keys = Counter(
        (e, d["attempt"]) for e in ids for d in reader.by_event.get(e, []) if is_attempt(d)
    )
    repeated_attempts = {k: n for k, n in attempt_keys.items() if n > 1}
    timing = schedule_timing(reader, firsts, ids)
    per_instance = []
    work = []
    for name, path in zip("ab", logs_paths, strict=True):
        summary = LogSummary.read([path])
        delivered_n = summary.counts.get("webhook_delivered", 0)
        work.append(delivered_n)
        per_instance.append(
            f"{name}: webhook_delivered {delivered_n:,}, webhook_retry_scheduled "
            f"{summary.counts.get('webhook_retry_scheduled', 0):,}, webhook_held "
            f"{summary.counts.get('webhook_held', 0):,}, partitions_assigned "
            f"{summary.counts.get('partitions_assigned', 0)}"
        )
    reasons = Counter(
        d["reason"]
        for e in ids
        for d in reader.by_event.get(e, [])
        if d["outcome"] == "retry_scheduled"
    )
    r.fig(
        "events",
        f"{len(ids):,}: {tests:,} tests x 4 trigger events (technical issue, reset, completed, invalidated)",
    )
    r.fig("instances", "2, same CONSUMER_GROUP and DATABASE_URL")
    r.fig("RETRY_SCHEDULE", schedule)
    r.fig(
        "receiver",
        f"nothing listening for {outage:.0f} s, bound at t+{bound_at - t0:.1f} s"
        if bound_at
        else "never bound",
    )
    r.fig("all final outcomes", f"t+{t_done - t0:.1f} s")
    r.fig("retry_scheduled reasons", fmt_counter(reasons))
    r.fig("per instance (log lines)", "; ".join(per_instance))
    r.fig("webhook ids received more than once", f"{len(twice):,}")
    r.fig(
        "earliest arrival against its announced next_attempt_at",
        f"{timing.min_margin * 1000:+.0f} ms" if timing.min_margin is not None else "n/a",
    )
    r.check(
        "exactly one final outcome per event, delivered",
        done and one_delivered == len(ids),
        f"{one_delivered:,}/{len(ids):,}",
    )
    r.check(
        "each retry sent once: no webhook-id received twice",
        not twice and len(firsts) == len(ids),
        f"{len(twice)} received twice, {len(firsts):,}/{len(ids):,} arrived",
    )
    r.check(
        "each attempt made once: no (event, attempt number) outcome twice",
        not repeated_attempts,
        f"{len(repeated_attempts)} repeated (e.g. {list(repeated_attempts)[:2]})",
    )
    r.check(
        "order per test kept: arrival order equals publication order",
        not out_of_order and len(firsts) == len(ids),
        f"{len(out_of_order)} of {tests:,} tests out of order",
    )
    r.check(
        "no attempt arrives before the next_attempt_at announced before it (50 ms slack)",
        timing.early_arrivals == 0 and timing.early_outcomes == 0 and timing.checked_arrivals > 0,
        f"{timing.early_arrivals} early arrivals of {timing.checked_arrivals:,}, "
        f"{timing.early_outcomes} early outcomes of {timing.checked_outcomes:,}",
    )
    r.check(
        "both instances shared the work (each delivered some) and stayed up",
        all(n > 0 for n in work) and all(alive),
        f"delivered {work[0]:,} / {work[1]:,}; alive {alive}",
    )
    r.key = f"{one_delivered:,}/{len(ids):,} delivered once, {len(twice)} dup ids, {len(out_of_order)} tests out of order, split {work[0]:,}/{work[1]:,}"


# --------------------------------------------------------------------------- drills

DRILLS: list[Drill] = [
    Drill(
        "isolation",
        "one bad endpoint does not slow the others",
        "10 tracking codes; 120,000 Complete events (2 per test id, the test ids spread over "
        "the codes in turn), 10% of them for the bad code. Two copies of the service run side "
        "by side on the same events, each with its own topics, group, database and receiver "
        "process: in the troubled copy the tenth code's endpoint (a) accepts the connection and "
        "reads the request but never answers (`HTTP_TOTAL_TIMEOUT` 15 s, the default), (b) "
        "refuses connections (nothing listens on its port), (c) answers 503 after 2 s; in the "
        "control copy it answers at once. Side by side, both copies share the machine's drift "
        "(the machine is shared, and its speed drifts by more than 10% within minutes). Each "
        "copy's healthy webhooks are counted at its receiver over the stretch in which both were "
        "delivering; the service's CPU time per healthy webhook is read from /proc. A first "
        "pair runs two controls, to measure the measure's own error. Passes when every healthy "
        "webhook arrives in every copy, the two controls are within 10% of each other, and each "
        "troubled copy delivers at least 0.9 of the healthy webhooks its control delivers "
        "beside it.",
        "5,000 events (500 for the bad code): runs of 1-2 s, a smoke test of delivery; their "
        "ratios swing with the start-up of each copy, and only the full size judges them",
        1500,
        drill_isolation,
    ),
    Drill(
        "outage",
        "a partner down for 100 s loses nothing",
        "One tracking code whose port has nothing listening for 100 s after the service is "
        "ready (then the receiver binds it and answers 200), `RETRY_SCHEDULE=2s,10s,60s,120s`, "
        "2,000 events (2 per test id). Passes when every webhook arrives, nothing fails, every "
        "event has exactly one final outcome (delivered), and no attempt comes early: each "
        "event's arrival is no earlier than the `next_attempt_at` of the last `retry_scheduled` "
        "before it, and no outcome is recorded before the `next_attempt_at` of the one before "
        "it (50 ms clock slack).",
        "500 events, a 30 s outage, `RETRY_SCHEDULE=2s,5s,10s,30s`",
        900,
        drill_outage,
    ),
    Drill(
        "outage-beyond-schedule",
        "down longer than the schedule: failed once, replayed, delivered",
        "One tracking code whose receiver stays down (nothing listening) until every event has "
        "its final outcome, `RETRY_SCHEDULE=1s,2s,4s`, 1,000 events. Passes when every event "
        "gets exactly one `failed` / `retries_exhausted` and is kept as a dead row; then the "
        "receiver comes up, `itep-webhooks deliveries replay --all` runs as a subprocess with "
        "the drill's `DATABASE_URL`, and every webhook must arrive, each event's final "
        "outcomes being `failed` then `delivered`, and the schedule ends empty.",
        "300 events",
        600,
        drill_outage_beyond,
    ),
    Drill(
        "crash",
        "SIGKILL 8 times mid-run: nothing lost, duplicates counted",
        "20,000 events (2 per test id) to one endpoint answering 503 to 30% of requests at "
        "random; `RETRY_SCHEDULE=1s,1s,2s,2s,4s,4s`, `SCHEDULE_LEASE=6s`. The service is "
        "SIGKILLed whenever another ninth of the events has a final outcome (8 times) and "
        "restarted at once. Then the drill waits for every final outcome and an empty "
        "schedule. Passes when no trigger event lacks a final outcome, none ends on "
        "`retry_scheduled`, no pending row is left (none overdue by more than lease + poll + "
        "10 s), every webhook answered 200 has a delivered outcome (unless a SIGKILL fell "
        "within 1 s of the 200: the outcome died with the process, and the event's redo may "
        "end otherwise) and every delivered outcome a 200, no webhook is answered 200 twice "
        "without a SIGKILL between the copies (the receiver may stamp a request up to 1 s after "
        "its sender was killed), and every failed event is `retries_exhausted` with a dead row. "
        "Duplicate webhooks (answered 200 more than once) and duplicate final outcomes are "
        "counted and reported, not failed.",
        "5,000 events, 3 kills",
        1200,
        drill_crash,
    ),
    Drill(
        "restarts",
        "Postgres and Kafka restarted under load: zero loss, recovery without help",
        "On a private Kafka broker and Postgres server that the drill starts itself (see "
        "below why), two runs of 5,000 events each to an endpoint answering 503 to 20% of "
        "requests after 20 ms, `RETRY_SCHEDULE=1s,2s,4s,8s,16s`. Once 30% of the events "
        "have a final outcome, (a) Postgres is stopped with `pg_ctl -m fast`, left down 5 s "
        "and started again, (b) the broker is stopped with SIGTERM (controlled shutdown), "
        "left down 10 s and started again. Passes when every event ends delivered or failed "
        "after the whole schedule with an empty schedule, every delivered event's webhook "
        "was answered 200, the same service process is alive and ready at the end, and it "
        "logged what it was waiting for; the log lines are counted and quoted.",
        "2,000 events per run",
        900,
        drill_restarts,
    ),
    Drill(
        "bad-input",
        "10,000 malformed records: all dead-lettered, memory flat",
        "10,000 malformed records (truncated JSON, wrong types, 1e400, 10**400, 10,000-level "
        "nesting, invalid UTF-8, non-objects, a key that is not the test id, and one 5 MB "
        "value per round) shuffled with 10,000 valid events, in two equal rounds, on topics "
        "with `max.message.bytes` 8 MiB (producer `max_request_size` 8 MiB). Each malformed "
        "record is first checked to be refused by `consumer.events.parse_event`. Passes when "
        "every malformed record is on the dead-letter topic with an `error` header and its "
        "bytes unchanged, no valid one is, every valid one is delivered, the process never "
        "exits, VmRSS (read from /proc every second) grows by at most 10% + 5 MB over the "
        "second round, and its peak stays within 100 MB of the start.",
        "2,000 valid and 2,000 malformed (the 5 MB value and the deep nesting included)",
        900,
        drill_bad_input,
    ),
    Drill(
        "instances",
        "two instances share the schedule: each retry once, order per test kept",
        "Two service instances with the same consumer group and database, one endpoint with "
        "nothing listening for 30 s, `RETRY_SCHEDULE=2s,5s,10s,30s`, 500 tests x 4 trigger "
        "events each (technical issue, reset, completed, invalidated), published event k of "
        "every test before event k + 1. Passes when every event has exactly one final "
        "outcome (delivered), no webhook-id arrives twice, no (event, attempt number) outcome "
        "appears twice, each test's webhooks arrive in publication order, no attempt comes "
        "before its announced `next_attempt_at`, and both instances delivered some.",
        "100 tests x 4 events, a 20 s outage, `RETRY_SCHEDULE=2s,4s,8s,20s`",
        900,
        drill_instances,
    ),
    # scripts/drills_cluster.py: on the local three-broker cluster, skipped when it is down.
    *(Drill(*spec, cluster=True) for spec in CLUSTER_DRILLS),
]


# --------------------------------------------------------------------------- report


def environment(admin_dsn: str) -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    kafka = ROOT / ".local" / "kafka" / "kafka.version"
    kafka_version = (
        kafka.read_text().strip()
        if kafka.exists()
        else "unknown (a broker not run by scripts/stack.sh)"
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("aiokafka", "aiohttp", "asyncpg", "orjson", "structlog", "uvloop")
    )
    return [
        ("machine", f"{cpu}, {os.cpu_count()} cores{memory}, {platform.platform()}"),
        ("Python", platform.python_version()),
        ("libraries", versions),
        ("Kafka", f"{kafka_version} (one KRaft node, scripts/stack.sh)"),
        ("itep-webhooks", service_version),
    ]


async def postgres_version(dsn: str) -> str:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return "unknown"
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


TEMPLATE = """# Reliability drills

`make drills` (or `.venv/bin/python scripts/drills.py`, with the stack up) breaks things on
purpose around the real service and measures what happens: a partner that hangs, refuses or
fails; a partner down for minutes; SIGKILLs mid-run; Postgres and Kafka restarts; malformed
input; two instances sharing the schedule. It is a benchmark-style runner, not a test suite:
every drill runs the real service (`python -m consumer run`, its own process) against
receivers in a separate process (`scripts/drills_lib.py receiver`, aiohttp, one port per
endpoint, all on 127.0.0.1), publishes with `producers.publisher.EventPublisher` to topics of
its own (6 partitions), uses its own consumer group and a fresh database `drill_<uuid>`
(migrated, dropped afterwards), and reads the outcome topic and what the receivers recorded.
make drills                                   # every drill, full size (about 20 minutes,
                                              # 15 more with the cluster up)
make drills DRILLS_ARGS=--quick               # a smaller version of each (sizes per drill)
make drills DRILLS_ARGS='--only cluster-broker-loss,cluster-scaling'

```sh
make drills                                   # every drill, full size (about 20 minutes)
make drills DRILLS_ARGS=--quick               # a smaller version of each (sizes per drill)
.venv/bin/python scripts/drills.py --only crash    # one drill (repeatable, or a,b)
.venv/bin/python scripts/drills.py --list          # the drills
```

Every loop is bounded in count and time (each drill is cancelled after its bound, every wait
has a timeout). Service logs (JSON) of every run are kept under `.local/drills/<date>/`.
The machine is shared and has 2 cores: the load average is noted per drill, and throughput
figures are only compared within one drill.

<!-- drills:environment -->
<!-- /drills:environment -->

## Summary

<!-- drills:summary -->
<!-- /drills:summary -->

## Drills

{blocks}

## Findings

<!-- Hand-written: kept when the runner rewrites the generated blocks. -->

## Limits

- **The restart drill runs on a private stack.** Restarting the shared broker and Postgres
  of `scripts/stack.sh` would break every other test and engineer using this checkout's
  stack at the same time, and the drills only stop processes they started. So the drill
  starts its own Postgres (`initdb` into `.local/drills/stack-*/`, `pg_ctl` as the `postgres`
  user, exactly as `scripts/stack.sh` runs the shared one) and its own Kafka broker (the
  same jars from `.local/kafka/libs`, the same JVM flags and the same `deploy/kafka/
  server.properties` with other ports), and restarts those: `pg_ctl -m fast stop` / `start`,
  and SIGTERM to the broker (what `scripts/stack.sh down` sends) / the same command again.
- Duplicates after a SIGKILL are by design (at-least-once); they are reported, not failed.
"""


def block(name: str, body: str) -> str:
    return f"<!-- drill:{name} -->\n{body.rstrip()}\n<!-- /drill:{name} -->"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(result: Result, drill: Drill, number: int) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    summary = orjson.dumps(
        {
            "name": result.name,
            "verdict": verdict,
            "date": result.started.strftime("%Y-%m-%d %H:%M UTC"),
            "mode": result.mode,
            "key": result.key,
        }
    ).decode()
    lines = [
        f"<!-- summary {summary} -->",
        f"### {number}. `{drill.name}`: {drill.title}",
        "",
        f"**Verdict: {verdict}** ({result.mode} run, {result.started:%Y-%m-%d %H:%M} UTC, "
        f"{result.seconds:.0f} s; load average {result.load_before} before, "
        f"{result.load_after} after)",
        "",
        f"What it does: {drill.what}",
        "",
        f"Run it alone: `.venv/bin/python scripts/drills.py --only {drill.name}` "
        f"(`--quick`: {drill.quick}).",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {cell(k)} | {cell(v)} |" for k, v in result.figures),
        "",
        "| check | verdict | seen |",
        "|---|---|---|",
        *(
            f"| {cell(c.name)} | {'pass' if c.passed else '**FAIL**'} | {cell(c.detail)} |"
            for c in result.checks
        ),
    ]
    if result.notes:
        lines += ["", *(f"- {note}" for note in result.notes)]
    if result.quotes:
        lines += ["", "Service log lines, first of each kind:", "", "```text"]
        for what, line in result.quotes:
            lines += [f"# {what}", line]
        lines += ["```"]
    return "\n".join(lines)


_BLOCK = re.compile(
    r"<!-- drill:(?P<name>[a-z-]+) -->\n(?P<body>.*?)\n<!-- /drill:(?P=name) -->", re.S
)


def write_report(
    results: list[Result],
    env: list[tuple[str, str]],
    command: str,
    started: datetime,
    seconds: float,
) -> None:
    text = REPORT.read_text() if REPORT.exists() else ""
    if "<!-- drills:summary -->" not in text:
        text = TEMPLATE.replace(
            "{blocks}",
            "\n\n".join(
                block(d.name, f"### {i}. `{d.name}`: {d.title}\n\nNot run yet.")
                for i, d in enumerate(DRILLS, 1)
            ),
        )
    by_name = {d.name: (i, d) for i, d in enumerate(DRILLS, 1)}
    for result in results:
        number, drill = by_name[result.name]
        new = block(result.name, render(result, drill, number))
        pattern = re.compile(
            rf"<!-- drill:{re.escape(result.name)} -->\n.*?\n<!-- /drill:{re.escape(result.name)} -->",
            re.S,
        )
        if pattern.search(text):
            text = pattern.sub(lambda _m, new=new: new, text)
        else:
            text = text.replace("\n## Findings", f"\n{new}\n\n## Findings")
    rows = ["| drill | verdict | run | figures |", "|---|---|---|---|"]
    for match in _BLOCK.finditer(text):
        found = re.search(r"<!-- summary (\{.*?\}) -->", match.group("body"))
        if not found:
            rows.append(f"| `{match.group('name')}` | not run | | |")
            continue
        doc = orjson.loads(found.group(1))
        verdict = "pass" if doc["verdict"] == "PASS" else "**FAIL**"
        rows.append(
            f"| `{doc['name']}` | {verdict} | {doc['mode']}, {doc['date']} | {cell(doc['key'])} |"
        )
    env_lines = [
        f"Last run: `{command}`, {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} minutes, drills: "
        + ", ".join(f"`{r.name}`" for r in results)
        + ".",
        "",
        *(f"- {k}: {v}" for k, v in env),
    ]
    text = re.sub(
        r"<!-- drills:summary -->\n.*?<!-- /drills:summary -->",
        lambda _m: "<!-- drills:summary -->\n" + "\n".join(rows) + "\n<!-- /drills:summary -->",
        text,
        flags=re.S,
    )
    text = re.sub(
        r"<!-- drills:environment -->\n.*?<!-- /drills:environment -->",
        lambda _m: (
            "<!-- drills:environment -->\n"
            + "\n".join(env_lines)
            + "\n<!-- /drills:environment -->"
        ),
        text,
        flags=re.S,
    )
    REPORT.write_text(text)


# ----------------------------------------------------------------------------- main


async def run_drill(drill: Drill, ctx: Ctx) -> Result:
    result = Result(drill.name, "quick" if ctx.quick else "full", datetime.now(UTC))
    result.load_before = load()
    started = time.monotonic()
    print(f"\n== {drill.name}: {drill.title} (load {result.load_before})", flush=True)
    try:
        async with asyncio.timeout(drill.bound):
            await drill.run(ctx, result)
    except TimeoutError:
        result.check("finished within its bound", False, f"cancelled after {drill.bound:.0f} s")
    except Exception as exc:  # noqa: BLE001 - a drill that breaks is reported as failed, with its traceback
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        traceback.print_exc()
        result.check("ran to completion", False, text[:500])
    result.seconds = time.monotonic() - started
    result.load_after = load()
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"== {drill.name}: {verdict} in {result.seconds:.0f} s (load {result.load_after})",
        flush=True,
    )
    return result


async def main(args: argparse.Namespace) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)
    # The drill's own readers see the broker go away on purpose; the service's log says it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    names = [n for item in args.only or [] for n in item.split(",") if n]
    known = {d.name: d for d in DRILLS}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"drills: unknown drill {', '.join(unknown)}; known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    chosen = [known[n] for n in names] if names else DRILLS
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    admin_dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/itep_webhooks")
    started = datetime.now(UTC)
    logs = WORK_DIR / started.strftime("%Y%m%d-%H%M%S")
    env = environment(admin_dsn)
    skipped: list[tuple[str, str]] = []
    if any(d.cluster for d in chosen):
        reason = await cluster_unavailable()
        if reason:
            skipped = [(d.name, reason) for d in chosen if d.cluster]
            chosen = [d for d in chosen if not d.cluster]
        else:
            env.append(("Kafka cluster", cluster_environment()))
    if not chosen:
        for name, reason in skipped:
            print(f"drills: {name}: skipped: {reason}")
        print("drills: nothing to run; RELIABILITY.md left as it is")
        return 0
    env.append(("Postgres", await postgres_version(admin_dsn)))
    command = " ".join(["python scripts/drills.py", *sys.argv[1:]]).strip()
    print(f"itep-webhooks reliability drills, {started:%Y-%m-%d %H:%M} UTC: {command}")
    for k, v in env:
        print(f"  {k}: {v}")
    print(f"  load average: {load()}; logs in {logs.relative_to(ROOT)}")
    for name, reason in skipped:
        print(f"  {name}: skipped: {reason}", flush=True)
    receiver = ReceiverClient(logs / "receiver.log")
    await receiver.start()
    ctx = Ctx(args.quick, bootstrap, admin_dsn, receiver, logs)
    results: list[Result] = []
    t0 = time.monotonic()
    try:
        for drill in chosen:
            results.append(await run_drill(drill, ctx))
    finally:
        await receiver.stop()
    seconds = time.monotonic() - t0
    if not args.no_report and results:
        write_report(results, env, command, started, seconds)
    print(f"\nverdicts ({seconds / 60:.1f} minutes):")
    for result in results:
        failed = [c.name for c in result.checks if not c.passed]
        print(
            f"  {result.name}: {'PASS' if result.passed else 'FAIL'}{' - ' + '; '.join(failed) if failed else ''}"
        )
    for name, reason in skipped:
        print(f"  {name}: SKIPPED - {reason}")
    if not args.no_report and results:
        print(f"results written to {REPORT.relative_to(ROOT)}")
    return 0 if all(r.passed for r in results) else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run this drill (repeatable, or a,b)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller version of each drill")
    parser.add_argument("--list", action="store_true", help="list the drills and exit")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite RELIABILITY.md")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.list:
        for d in DRILLS:
            print(f"{d.name}: {d.title}\n    {d.what}\n    --quick: {d.quick}\n")
        sys.exit(0)
    import uvloop

    sys.exit(uvloop.run(main(arguments)))
