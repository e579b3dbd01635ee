"""The ``isolation`` drill of `make drills`: one bad endpoint does not slow the others.

Each bad endpoint is measured against a control *at the same time*: two copies of the
service run side by side, each with its own topics, database and receiver process, on the
same 120,000 events. In one the tenth tracking code's endpoint is in trouble, in the other
it answers at once. The machine is shared and its speed drifts by more than the 10% the
check allows within minutes; side by side, both copies run on the same machine in the same
seconds, so the drift cancels out of their ratio. The healthy webhooks each copy delivers
are counted over the stretch in which both were delivering (from the later first healthy
arrival to the earlier last one): when one copy has finished, the other has the machine to
itself, and that stretch is left out.

A first pair runs two controls against each other: its ratio is the measure's own error,
checked to be within 10% of 1, since a verdict at 0.9 means nothing if two equal copies
can come out further apart than that. The bad endpoint sits on either receiver process in
turn, so that neither process is always the troubled one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from drills_lib import (
    Arrival,
    DrillStack,
    LogSummary,
    OutcomeReader,
    ReceiverClient,
    ServiceProc,
    breaker_lines,
    complete_event,
    first_arrivals,
    fmt_counter,
    free_port,
    longest_pause,
    pct,
    publish,
    stop_all,
    wait_until,
)

from producers.builder import ExamEventMessage

if TYPE_CHECKING:
    from drills import Ctx, Result

HEALTHY_CODES = [f"OK-{i}" for i in range(9)]
BAD_CODE = "BAD"
# (label, what the tenth code's endpoint does on the troubled side); the first pair is the
# measure's own error: both sides healthy.
PAIRS: list[tuple[str, str]] = [
    ("control against control", "ok"),
    ("never answers", "hang"),
    ("refuses connections", "refuse"),
    ("503 after 2 s", "slow503"),
]
MIN_RATIO = 0.9
CONTROL_TOLERANCE = 0.1


@dataclass
class Side:
    """One copy of the service in a pair, with its receiver's endpoints and its stack."""

    name: str  # "troubled" or "control"
    receiver: ReceiverClient
    behaviour: str  # what the tenth code's endpoint does
    ports: list[int] = field(default_factory=list)
    bad_port: int = 0
    opened: list[int] = field(default_factory=list)  # ports bound on its receiver
    stack: DrillStack | None = None
    service: ServiceProc | None = None
    reader: OutcomeReader | None = None
    log: Path | None = None
    seen: set[str] = field(default_factory=set)  # healthy webhooks arrived so far
    scanned: int = 0  # arrivals already looked at by ``done``
    arrivals: list[Arrival] = field(default_factory=list)
    firsts: dict[str, Arrival] = field(default_factory=dict)  # each healthy webhook's first
    docs: list[dict[str, object]] = field(default_factory=list)
    cpu: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def healthy_ports(self) -> set[int]:
        return set(self.ports)

    async def prepare(self, ctx: Ctx, events: list[ExamEventMessage]) -> None:
        """Its endpoints on its receiver, its topics and database, the events published."""
        self.ports = [free_port() for _ in HEALTHY_CODES]
        for port in self.ports:
            await self.open(port, "ok")
        self.bad_port = free_port()
        if self.behaviour == "slow503":
            await self.open(self.bad_port, "slow503", delay=2.0)
        elif self.behaviour != "refuse":  # "refuse": nothing listens on its port
            await self.open(self.bad_port, self.behaviour)
        self.stack = await DrillStack.create("isolation", ctx.bootstrap, ctx.admin_dsn)
        for code, port in zip(HEALTHY_CODES, self.ports, strict=True):
            await self.stack.add_code(code, f"http://127.0.0.1:{port}/{code}")
        await self.stack.add_code(BAD_CODE, f"http://127.0.0.1:{self.bad_port}/{BAD_CODE}")
        await publish(self.stack.bootstrap, self.stack.events_topic, events)
        await self.receiver.reset()
        self.reader = OutcomeReader(self.stack.bootstrap, self.stack.outcomes_topic)
        await self.reader.start()
        self.log = ctx.log_path(self.stack, f"service-{self.name}")

    async def open(self, port: int, behaviour: str, *, delay: float = 0.0) -> None:
        await self.receiver.open(port, behaviour, delay=delay)
        self.opened.append(port)

    async def launch(self) -> None:
        assert self.stack is not None
        assert self.log is not None
        self.service = await ServiceProc.launch(
            f"isolation-{self.name}", self.stack.env(DRAIN_TIMEOUT="5s"), self.log
        )

    async def done(self, healthy_ids: set[str]) -> bool:
        """Every healthy webhook has arrived and has its final outcome."""
        assert self.reader is not None
        arrivals = await self.receiver.arrivals()
        ports = self.healthy_ports
        self.seen.update(a.webhook_id for a in arrivals[self.scanned :] if a.port in ports)
        self.scanned = len(arrivals)
        return len(self.seen) >= len(healthy_ids) and self.reader.final_count(healthy_ids) >= len(
            healthy_ids
        )

    async def collect(self) -> None:
        """What the run left: arrivals, outcomes, the service's CPU, the schedule's rows."""
        assert self.stack is not None
        assert self.reader is not None
        self.arrivals = list(await self.receiver.arrivals())
        self.firsts = first_arrivals(self.arrivals, self.healthy_ports)
        self.docs = self.reader.all_docs()
        if self.service is not None:
            self.cpu = self.service.cpu_seconds()
            await self.service.stop()
        self.counts = await self.stack.schedule_counts()

    async def close(self) -> None:
        await stop_all(self.service, self.reader)
        if self.stack is not None:
            await self.stack.close()
        for port in self.opened:
            await self.receiver.close_port(port)

    def healthy_times(self) -> list[float]:
        return sorted(a.at for a in self.firsts.values())


def common_stretch(a: list[float], b: list[float]) -> tuple[float, float]:
    """The stretch in which both sides were delivering: the later first arrival to the
    earlier last one (empty, start >= end, when they do not overlap)."""
    if not a or not b:
        return 0.0, 0.0
    return max(a[0], b[0]), min(a[-1], b[-1])


def count_within(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t <= end)


async def drill_isolation(ctx: Ctx, r: Result) -> None:
    # Each run must last long enough (10 s or more) that the hanging endpoint's attempts
    # reach HTTP_TOTAL_TIMEOUT (15 s) within it.
    total = 5_000 if ctx.quick else 120_000
    codes = [*HEALTHY_CODES, BAD_CODE]
    # Two Complete events per test id, the test ids spread over the ten codes in turn.
    events = [complete_event(f"I{i // 2:06d}", codes[(i // 2) % 10]) for i in range(total)]
    healthy_ids = {e.event_id for e in events if e.tracking_code != BAD_CODE}
    bad_ids = {e.event_id for e in events if e.tracking_code == BAD_CODE}
    r.fig(
        "events",
        f"{total:,} Complete events over {total // 2:,} test ids and 10 tracking codes, "
        "published to each copy of the service",
    )
    r.fig("bad endpoint share", f"{len(bad_ids):,} events ({pct(len(bad_ids), total)})")
    second = ReceiverClient(ctx.logs / "receiver-isolation.log")
    await second.start()
    receivers = (ctx.receiver, second)
    ratios: list[str] = []
    try:
        for number, (label, behaviour) in enumerate(PAIRS):
            ctx.say(f"isolation pair: {label}")
            troubled = Side("troubled", receivers[number % 2], behaviour)
            control = Side("control", receivers[(number + 1) % 2], "ok")
            sides = (troubled, control)
            try:
                for side in sides:
                    await side.prepare(ctx, events)
                await asyncio.gather(*(side.launch() for side in sides))

                async def both_done() -> bool:
                    return all([await side.done(healthy_ids) for side in sides])

                finished = await wait_until(
                    both_done,
                    600,
                    every=0.5,
                    tick=lambda: ctx.say(
                        "  healthy webhooks: "
                        + ", ".join(f"{s.name} {len(s.seen):,}" for s in sides)
                        + f" of {len(healthy_ids):,} each"
                    ),
                )
                for side in sides:
                    await side.collect()
            finally:
                for side in sides:
                    await side.close()
            ratio = report_pair(
                r,
                label=label,
                behaviour=behaviour,
                troubled=troubled,
                control=control,
                finished=finished,
                healthy_ids=healthy_ids,
                bad_ids=bad_ids,
            )
            ratios.append(f"{label} {ratio:.2f}")
            if ctx.quick:
                # Runs of 1-2 s: the ratio follows which copy got going first.
                r.fig(f"{label}: ratio at quick size", f"{ratio:.2f} (not judged)")
            elif behaviour == "ok":
                r.check(
                    f"{label}: two equal copies within {CONTROL_TOLERANCE:.0%} of each other "
                    "(the measure's own error)",
                    abs(ratio - 1.0) <= CONTROL_TOLERANCE,
                    f"{ratio:.2f}",
                )
            else:
                r.check(
                    f"{label}: healthy webhooks >= {MIN_RATIO} x the control's, side by side",
                    ratio >= MIN_RATIO,
                    f"{ratio:.2f}",
                )
    finally:
        await second.stop()
    r.key = "healthy webhooks against the control beside it: " + ", ".join(ratios)


def report_pair(
    r: Result,
    *,
    label: str,
    behaviour: str,
    troubled: Side,
    control: Side,
    finished: bool,
    healthy_ids: set[str],
    bad_ids: set[str],
) -> float:
    """The pair's figures and its delivery checks; returns troubled / control, the healthy
    webhooks each delivered in the stretch where both were delivering."""
    times = {side.name: side.healthy_times() for side in (troubled, control)}
    start, end = common_stretch(times["troubled"], times["control"])
    counted = {name: count_within(t, start, end) for name, t in times.items()}
    ratio = counted["troubled"] / counted["control"] if counted["control"] else 0.0
    seconds = max(end - start, 0.0)
    r.fig(
        f"{label}",
        f"{ratio:.2f}: {counted['troubled']:,} healthy webhooks beside the control's "
        f"{counted['control']:,} in the {seconds:.1f} s both were delivering "
        f"({counted['troubled'] / seconds if seconds else 0:,.0f} and "
        f"{counted['control'] / seconds if seconds else 0:,.0f} a second)",
    )
    for side in (troubled, control):
        firsts = side.firsts
        healthy_out = Counter(
            str(d["outcome"])
            for d in side.docs
            if d["event_id"] in healthy_ids and d["outcome"] != "retry_scheduled"
        )
        assert side.log is not None
        logs = LogSummary.read([side.log], keep=("fetching_paused", "fetching_resumed"))
        pause, pause_quote = longest_pause(logs)
        cpu = f"{side.cpu / len(firsts) * 1000:.2f} ms" if side.cpu and firsts else "n/a"
        detail = (
            f"{len(firsts):,} healthy webhooks in {times[side.name][-1] - times[side.name][0]:.1f} s"
            if len(times[side.name]) > 1
            else f"{len(firsts):,} healthy webhooks"
        )
        detail += (
            f"; healthy final outcomes {fmt_counter(healthy_out)}; service CPU {cpu} per "
            f"healthy webhook; fetching paused {logs.counts.get('fetching_paused', 0)} times, "
            f"longest {pause:.1f} s"
        )
        if side is troubled and behaviour != "ok":
            bad_out = Counter(
                f"{d['outcome']}/{d['reason']}" for d in side.docs if d["event_id"] in bad_ids
            )
            reached = sum(1 for a in side.arrivals if a.port == side.bad_port)
            detail += (
                f"; bad code: {reached:,} requests reached its endpoint, outcomes "
                f"{fmt_counter(bad_out)}; schedule rows {side.counts or '{}'}; "
                f"{breaker_lines(logs)}"
            )
            if logs.quote("breaker_open"):
                r.quote(f"isolation, {label}: breaker", logs.quote("breaker_open"))
        r.fig(f"{label}, {side.name} copy", detail)
        if pause_quote:
            r.quote(f"isolation, {label}, {side.name} copy: longest fetching pause", pause_quote)
        r.check(
            f"{label}, {side.name} copy: every healthy webhook delivered",
            finished
            and len(firsts) == len(healthy_ids)
            and healthy_out.get("delivered", 0) == len(healthy_ids)
            and sum(healthy_out.values()) == len(healthy_ids),
            f"{len(firsts):,}/{len(healthy_ids):,} arrived, healthy final outcomes "
            f"{fmt_counter(healthy_out)}",
        )
    return ratio
