"""The cluster drills of `make drills` (scripts/drills.py): faults of a three-broker Kafka
cluster and of several service instances on it.

They run against the local cluster of `make cluster-up` (scripts/cluster.sh: node N is broker
id N on 127.0.0.1:1909(1+N); ``ITEP_CLUSTER_BOOTSTRAP`` overrides the address, but the nodes
must be the ones scripts/cluster.sh started, since the drills stop, kill and start them with
it). When the cluster is not up, drills.py skips them with one line and runs the others.

Every run has its own topics (6 partitions, 3 replicas, ``min.insync.replicas`` 2, created by
the service's own ``consumer.topics.ensure_topics``), consumer group and database, as the
one-node drills do; the service runs with ``KAFKA_BOOTSTRAP_SERVERS`` listing the three
brokers and ``TOPIC_REPLICATION_FACTOR=3``. Every node a drill stopped or killed is started
again before the drill returns, whatever happened, and the next cluster drill starts any node
left down.

- ``cluster-broker-loss``: SIGKILL the broker leading the busiest partitions mid-run;
- ``cluster-two-brokers-down``: one broker stopped, a second one killed and restarted while
  the first is still down (writes with acks=all wait, then resume);
- ``cluster-instance-loss``: three instances, one SIGKILLed every 20 s and replaced;
- ``cluster-rolling-upgrade``: three instances, each stopped (SIGTERM) and replaced in turn;
- ``cluster-scaling``: webhooks/s with 1, 2 and 3 instances against slow receivers, against
  the concurrency bound ``MAX_IN_FLIGHT`` / latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import re
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cluster_tools import CLUSTER_BOOTSTRAP, ClusterToolError, describe_partitions, wait_in_sync
from cluster_tools import brokers as cluster_brokers
from drills_lib import (
    ROOT,
    Arrival,
    DrillStack,
    OutcomeReader,
    ServiceProc,
    _run,
    complete_event,
    fmt_counter,
    free_port,
    parse_time,
    publish,
    stop_all,
    wait_until,
)

from consumer.service import HEARTBEAT_INTERVAL, REBALANCE_MARGIN
from producers.builder import ExamEventMessage
from producers.publisher import Delivery, EventPublisher

if TYPE_CHECKING:
    from drills import Ctx, Result

CLUSTER = os.environ.get("ITEP_CLUSTER_BOOTSTRAP", CLUSTER_BOOTSTRAP)
NODES = (1, 2, 3)
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"
PARTITIONS = 6
KILL_SLACK = 1.0  # seconds: the receiver may stamp a request of a killed process this late


def _default(cls: type, name: str) -> int:
    return int(inspect.signature(cls).parameters[name].default)


# The session timeout is aiokafka's default (read from the library actually installed);
# the heartbeat interval and the rebalance timeout's margin are the service's own.
SESSION_TIMEOUT = _default(AIOKafkaConsumer, "session_timeout_ms") / 1000
PRODUCER_REQUEST_TIMEOUT = _default(AIOKafkaProducer, "request_timeout_ms") / 1000
DRAIN_TIMEOUT = 30.0  # the service's default, not overridden here
WAITING_EVENTS = (
    "publish_failed",
    "commit_failed",
    "poll_failed",
    "lag_unknown",
    "committed_offset_unknown",
    "fetching_paused",
)


# ------------------------------------------------------------------------ the cluster


async def cluster_sh(action: str, node: int | None = None, timeout: float = 240) -> str:
    """``scripts/cluster.sh ACTION [N]``; its output. Raises when it fails."""
    command = ["bash", str(CLUSTER_SH), action, *([str(node)] if node is not None else [])]
    code, out = await _run(command, timeout)
    if code:
        raise RuntimeError(
            f"scripts/cluster.sh {action} {node or ''} failed ({code}): {out[-800:]}"
        )
    return out.strip()


async def kill_node(node: int) -> float:
    """SIGKILL node ``node`` now; the moment it was sent (Unix seconds).

    The signal is sent from here, to the pid ``cluster.sh pid`` names, so that the moment is
    exact (``cluster.sh kill`` takes a few hundred ms to get there); ``cluster.sh kill`` then
    waits for the exit and clears its pid file, as it does for a kill of its own."""
    code, out = await _run(["bash", str(CLUSTER_SH), "pid", str(node)], 30)
    if code or not out.strip().isdigit():
        raise RuntimeError(f"node {node} is not running (cluster.sh pid: {out.strip()!r})")
    at = time.time()
    os.kill(int(out.strip()), signal.SIGKILL)
    await cluster_sh("kill", node)
    return at


async def node_running(node: int) -> bool:
    code, out = await _run(["bash", str(CLUSTER_SH), "pid", str(node)], 30)
    return code == 0 and out.strip().isdigit()


async def cluster_unavailable() -> str | None:
    """Why the cluster drills cannot run (None: they can)."""
    if not CLUSTER_SH.exists():
        return f"no {CLUSTER_SH.relative_to(ROOT)}"
    down = [n for n in NODES if not await node_running(n)]
    if len(down) == len(NODES):
        return "the local 3-broker cluster is not up: run make cluster-up"
    if down:
        return (
            f"node(s) {', '.join(map(str, down))} of the local cluster are not running: "
            "run make cluster-up"
        )
    try:
        described = await asyncio.wait_for(cluster_brokers(CLUSTER), 30)
    except (ClusterToolError, KafkaError, OSError, TimeoutError) as exc:
        return f"the cluster at {CLUSTER} does not answer ({exc or type(exc).__name__})"
    ids = sorted(int(b["node_id"]) for b in described["brokers"])
    if ids != list(NODES):
        return f"the cluster at {CLUSTER} lists brokers {ids}, not 1, 2 and 3"
    return None


def cluster_environment() -> str:
    version = ROOT / ".local" / "cluster" / "kafka.version"
    release = version.read_text().strip() if version.exists() else "unknown"
    return (
        f"{release}, three KRaft nodes of scripts/cluster.sh (each broker and controller) on "
        f"{CLUSTER}; topics of the cluster drills: 6 partitions, 3 replicas, "
        "min.insync.replicas 2"
    )


async def ensure_whole(ctx: Ctx) -> list[int]:
    """Start every node that is not running (a drill before may have left one down)."""
    started = []
    for n in NODES:
        if not await node_running(n):
            ctx.say(f"cluster node {n} is down: starting it")
            await cluster_sh("start", n)
            started.append(n)
    return started


async def partition_leaders(topic: str) -> dict[int, int]:
    return {p.partition: p.leader for p in await describe_partitions(topic, CLUSTER)}


async def leaders_moved(victim: int, topics: Sequence[str], since: float) -> float | None:
    """Seconds from ``since`` until no partition of ``topics`` is led by ``victim`` (or has
    no leader); None after 90 s."""
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            states = [p for t in topics for p in await describe_partitions(t, CLUSTER)]
        except (ClusterToolError, KafkaError, OSError):
            states = []
        if states and all(p.leader >= 0 and p.leader != victim for p in states):
            return time.time() - since
        await asyncio.sleep(0.25)
    return None


async def group_coordinator(group: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=CLUSTER, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        return int(await asyncio.wait_for(admin.find_coordinator(group), 10))
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await admin.close()


async def all_in_sync(topics: Iterable[str], within: float = 90) -> tuple[bool, float, str]:
    """Every partition of ``topics`` led and fully in sync; (done, seconds, detail)."""
    started = time.time()
    try:
        for topic in topics:
            await wait_in_sync(topic, max(1.0, within - (time.time() - started)), CLUSTER)
    except ClusterToolError as exc:
        return False, time.time() - started, str(exc)
    return True, time.time() - started, "every partition has 3 replicas in sync"


# ----------------------------------------------------------------------- measurements


def secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def cluster_env(stack: DrillStack, **extra: str) -> dict[str, str]:
    return stack.env(TOPIC_REPLICATION_FACTOR="3", **extra)


async def open_codes(
    ctx: Ctx, stack: DrillStack, count: int, *, delay: float = 0.0, prefix: str = "CL"
) -> tuple[list[str], list[int]]:
    codes = [f"{prefix}-{i}" for i in range(count)]
    ports = [free_port() for _ in codes]
    for code, port in zip(codes, ports, strict=True):
        await ctx.receiver.open(port, "ok", delay=delay)
        await stack.add_code(code, f"http://127.0.0.1:{port}/{code}")
    return codes, ports


async def close_ports(ctx: Ctx, ports: Iterable[int]) -> None:
    for port in ports:
        with contextlib.suppress(Exception):
            await ctx.receiver.close_port(port)


@dataclass
class Tally:
    """Loss and duplicates of one run, from the outcome topic and the receiver."""

    events: int
    without_final: list[str]
    not_delivered: list[str]  # no delivered outcome
    no_webhook: list[str]  # no request answered 200 at the receiver
    dup_webhooks: int  # event ids received more than once
    extra_copies: int
    dup_finals: int  # event ids with more than one final outcome
    finals: Counter[str]

    @property
    def lost(self) -> int:
        return len(set(self.without_final) | set(self.no_webhook))

    def lost_text(self) -> str:
        return (
            f"{len(self.without_final):,} of {self.events:,} events without a final outcome, "
            f"{len(self.no_webhook):,} without a webhook answered 200, "
            f"{len(self.not_delivered):,} without a delivered outcome"
            + (f" (e.g. {(self.without_final or self.no_webhook)[:3]})" if self.lost else "")
        )

    def dup_text(self) -> str:
        return (
            f"{self.dup_webhooks:,} webhooks received more than once ({self.extra_copies:,} "
            f"extra copies), {self.dup_finals:,} events with more than one final outcome"
        )


def tally(reader: OutcomeReader, ids: Sequence[str], arrivals: Iterable[Arrival]) -> Tally:
    got = Counter(a.webhook_id for a in arrivals)
    ok = Counter(a.webhook_id for a in arrivals if a.answer == 200)
    finals = {
        e: [d for d in reader.by_event.get(e, []) if d["outcome"] != "retry_scheduled"] for e in ids
    }
    return Tally(
        events=len(ids),
        without_final=[e for e in ids if not finals[e]],
        not_delivered=[e for e in ids if not any(d["outcome"] == "delivered" for d in finals[e])],
        no_webhook=[e for e in ids if not ok.get(e)],
        dup_webhooks=sum(1 for e in ids if got.get(e, 0) > 1),
        extra_copies=sum(got[e] - 1 for e in ids if got.get(e, 0) > 1),
        dup_finals=sum(1 for e in ids if len(finals[e]) > 1),
        finals=Counter(
            f"{d['outcome']}/{d['reason']}" if d["reason"] else d["outcome"]
            for e in ids
            for d in finals[e]
        ),
    )


def read_times(reader: OutcomeReader) -> list[float]:
    return sorted(float(d["_read_at"]) for d in reader.all_docs())


def longest_gap(times: Sequence[float], start: float, end: float) -> tuple[float, float]:
    """The longest stretch without an item in [start, end]: (seconds, where it began)."""
    inside = [start, *(t for t in times if start <= t <= end), end]
    best, at = 0.0, start
    for a, b in itertools.pairwise(inside):
        if b - a > best:
            best, at = b - a, a
    return best, at


def rate_back(times: Sequence[float], before: float, since: float, share: float) -> float | None:
    """The start of the first one-second bucket from ``since`` on that holds ``share`` of the
    rate of the 10 s before ``before``."""
    pre = sum(1 for t in times if before - 10.0 <= t < before) / 10.0
    if pre <= 0:
        return None
    buckets = Counter(int(t - since) for t in times if t >= since)
    for second in range(max(buckets, default=-1) + 1):
        if buckets.get(second, 0) >= share * pre:
            return since + second
    return None


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float] | None:
    """A service's /metrics, summed per metric name (None: no answer)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        labelled, _, value = line.rpartition(" ")
        name = labelled.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class LagWatch:
    """The group's lag on the events topic, read every second with one admin client:
    the end offsets are known from the deliveries of what the drill published."""

    def __init__(self, stack: DrillStack) -> None:
        self.stack = stack
        self.ends: dict[int, int] = {}
        self.samples: list[tuple[float, int | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._admin: AIOKafkaAdminClient | None = None

    def published(self, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            self.ends[d.partition] = max(self.ends.get(d.partition, 0), d.offset + 1)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._routine())

    async def _routine(self) -> None:
        while True:
            at = time.time()
            lag: int | None = None
            try:
                if self._admin is None:
                    self._admin = AIOKafkaAdminClient(
                        bootstrap_servers=CLUSTER, request_timeout_ms=5000
                    )
                    await asyncio.wait_for(self._admin.start(), 10)
                offsets = await asyncio.wait_for(
                    self._admin.list_consumer_group_offsets(self.stack.group), 6
                )
                committed = {
                    tp.partition: meta.offset
                    for tp, meta in offsets.items()
                    if tp.topic == self.stack.events_topic and meta.offset >= 0
                }
                lag = sum(max(0, end - committed.get(p, 0)) for p, end in self.ends.items())
            except (KafkaError, OSError, TimeoutError):
                pass
            self.samples.append((at, lag))
            await asyncio.sleep(max(0.0, 1.0 - (time.time() - at)))

    def zero_after(self, since: float) -> float | None:
        return next((t for t, lag in self.samples if t >= since and lag == 0), None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._admin is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(self._admin.close(), 10)


class RatePublisher:
    """Publishes events at a steady rate until stopped, as upstream would during a run."""

    def __init__(
        self,
        stack: DrillStack,
        rate: float,
        make: Callable[[int], ExamEventMessage],
        lag: LagWatch | None = None,
    ) -> None:
        self.stack = stack
        self.rate = rate
        self.make = make
        self.lag = lag
        self.ids: list[str] = []
        self.partition: dict[str, int] = {}
        self.behind = 0.0  # the most seconds it fell behind its schedule
        self.paused = 0.0  # seconds paused in all
        self._stop = asyncio.Event()
        self._go = asyncio.Event()
        self._go.set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._routine())

    def pause(self) -> None:
        """No new batch until ``resume`` (the schedule shifts by the pause)."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    async def _routine(self) -> None:
        loop = asyncio.get_running_loop()
        batch = max(1, round(self.rate / 10))
        async with EventPublisher(self.stack.bootstrap, self.stack.events_topic) as publisher:
            started = loop.time()
            sent = 0
            while not self._stop.is_set():
                if not self._go.is_set():
                    paused_at = loop.time()
                    await self._go.wait()  # resume() or stop()
                    started += loop.time() - paused_at
                    self.paused += loop.time() - paused_at
                    continue
                due = started + sent / self.rate
                now = loop.time()
                if due > now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), due - now)
                    continue
                self.behind = max(self.behind, now - due)
                events = [self.make(sent + i) for i in range(batch)]
                placed = await publisher.publish_many(events)
                for event, delivery in zip(events, placed, strict=True):
                    self.ids.append(event.event_id)
                    self.partition[event.event_id] = delivery.partition
                if self.lag is not None:
                    self.lag.published(placed)
                sent += batch

    async def stop(self) -> None:
        self._stop.set()
        self._go.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)


# ------------------------------------------------------------------------ service logs


_PARTITION = re.compile(r"partition=(\d+)")


def log_docs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every JSON line of the logs, with ``_at`` (Unix seconds) and ``_path``."""
    out: list[dict[str, Any]] = []
    for path in paths:
        if not path.exists():
            continue
        with path.open("rb") as lines:
            for raw in lines:
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and "timestamp" in doc:
                    doc["_at"] = datetime.fromisoformat(str(doc["timestamp"])).timestamp()
                    doc["_path"] = path
                    out.append(doc)
    return out


def partitions_of(doc: dict[str, Any]) -> set[int]:
    return {int(m) for m in _PARTITION.findall(" ".join(map(str, doc.get("partitions", []))))}


def assignment_now(path: Path) -> set[int]:
    """The partitions an instance holds according to its log: its last
    ``partitions_assigned`` unless a ``partitions_revoked`` came after it."""
    held: set[int] = set()
    for doc in log_docs([path]):
        if doc.get("event") == "partitions_assigned":
            held = partitions_of(doc)
        elif doc.get("event") == "partitions_revoked":
            held = set()
    return held


def assigned_after(path: Path, since: float) -> list[tuple[float, set[int]]]:
    return [
        (doc["_at"], partitions_of(doc))
        for doc in log_docs([path])
        if doc.get("event") == "partitions_assigned" and doc["_at"] > since
    ]


def waiting_lines(
    paths: Iterable[Path], start: float, end: float
) -> tuple[Counter[str], dict[str, str]]:
    """What the service said between ``start`` and ``end``: its own lines of WAITING_EVENTS
    and the library's (aiokafka) warnings and errors, counted, the first of each quoted."""
    counts: Counter[str] = Counter()
    quotes: dict[str, str] = {}
    for doc in log_docs(paths):
        if not start <= doc["_at"] <= end:
            continue
        event = str(doc.get("event"))
        if "logger" in doc:
            if doc.get("level") not in ("warning", "error"):
                continue
            text = re.sub(r"\d+", "N", event)[:90]
            name = f"{doc['logger']}: {text}"
        elif event in WAITING_EVENTS:
            name = event + (f" (waiting_for={doc['waiting_for']})" if "waiting_for" in doc else "")
        else:
            continue
        counts[name] += 1
        if name not in quotes:
            quoted = {k: v for k, v in doc.items() if not k.startswith("_")}
            quotes[name] = orjson.dumps(quoted).decode()[:600]
    return counts, quotes


@dataclass
class Instances:
    """Service instances of one run in numbered slots, each incarnation its own log."""

    ctx: Ctx
    stack: DrillStack
    env: dict[str, str]
    label: str
    slots: list[ServiceProc | None] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)  # current log per slot
    every_log: list[Path] = field(default_factory=list)
    incarnation: int = 0

    async def launch(self, slot: int) -> tuple[ServiceProc, float]:
        self.incarnation += 1
        path = self.ctx.log_path(self.stack, f"{self.label}-{slot}-{self.incarnation}")
        started = time.monotonic()
        proc = ServiceProc(f"{self.label}-{slot}", self.env, path)
        while len(self.slots) <= slot:
            self.slots.append(None)
            self.logs.append(path)
        self.slots[slot] = proc  # tracked before it is ready: stopped whatever happens
        self.logs[slot] = path
        self.every_log.append(path)
        await proc.start()
        await proc.ready(60)
        return proc, time.monotonic() - started

    async def launch_all(self, count: int) -> None:
        for _ in range(count):
            self.slots.append(None)
            self.logs.append(Path())
        await asyncio.gather(*(self.launch(slot) for slot in range(count)))

    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is not None and s.alive]

    def assignments(self) -> dict[int, set[int]]:
        return {i: assignment_now(self.logs[i]) for i in self.live()}

    async def whole(self, timeout: float = 90) -> bool:
        """Every partition held by a live instance, each live instance holding some."""

        def done() -> bool:
            held = self.assignments()
            covered = set().union(*held.values()) if held else set()
            return covered == set(range(PARTITIONS)) and all(held.values())

        return await wait_until(done, timeout, every=0.25)

    async def holding(self, slot: int, timeout: float = 90) -> bool:
        """Wait until the instance in ``slot`` holds some partitions."""
        return await wait_until(lambda: bool(assignment_now(self.logs[slot])), timeout, every=0.2)

    async def stop(self) -> None:
        """SIGTERM to every instance at once (one by one, each leaving would rebalance the
        others), and wait for them."""
        await asyncio.gather(
            *(proc.stop() for proc in self.slots if proc is not None), return_exceptions=True
        )


# ------------------------------------------------------------------------ broker loss


async def drill_broker_loss(ctx: Ctx, r: Result) -> None:
    count = 10_000 if ctx.quick else 50_000
    at_share = 0.3
    await ensure_whole(ctx)
    stack = await DrillStack.create("brokerloss", CLUSTER, ctx.admin_dsn, replication=3)
    service = reader = lag = None
    ports: list[int] = []
    killed: int | None = None
    moved_task: asyncio.Task[float | None] | None = None
    try:
        codes, ports = await open_codes(ctx, stack, 3)
        events = [complete_event(f"K{i // 2:06d}", codes[(i // 2) % 3]) for i in range(count)]
        ids = [e.event_id for e in events]
        started = time.monotonic()
        placed = await publish(CLUSTER, stack.events_topic, events)
        publish_s = time.monotonic() - started
        per_partition = Counter(d.partition for d in placed)
        lag = LagWatch(stack)
        lag.published(placed)
        await ctx.receiver.reset()
        reader = OutcomeReader(CLUSTER, stack.outcomes_topic)
        await reader.start()
        log = ctx.log_path(stack, "service")
        service = ServiceProc("service", cluster_env(stack), log)
        await service.start()
        await service.ready(60)
        pid = service.pid
        await lag.start()
        t0 = time.time()
        await wait_until(
            lambda: reader.final_count(ids) >= count * at_share,
            600,
            every=0.1,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{count:,} final outcomes"),
        )
        leaders = await partition_leaders(stack.events_topic)
        out_leaders = await partition_leaders(stack.outcomes_topic)
        events_led = Counter(leaders[p] for p in per_partition)
        load = Counter(
            {n: sum(c for p, c in per_partition.items() if leaders[p] == n) for n in NODES}
        )
        victim = max(NODES, key=lambda n: (load[n], events_led[n], -n))
        coordinator = await group_coordinator(stack.group)
        at_progress = reader.final_count(ids)
        killed = victim
        t_kill = await kill_node(victim)
        moved_task = asyncio.create_task(
            leaders_moved(victim, [stack.events_topic, stack.outcomes_topic], t_kill)
        )
        ctx.say(
            f"  SIGKILL node {victim} at {at_progress:,}/{count:,} final outcomes "
            f"(t+{t_kill - t0:.1f} s)"
        )
        all_final = await wait_until(
            lambda: reader.final_count(ids) >= count,
            600,
            every=0.25,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{count:,} final outcomes"),
        )
        t_final = time.time()
        await wait_until(lambda: lag.zero_after(t_kill) is not None, 60, every=0.5)
        moved = await asyncio.wait_for(moved_task, 100)
        await asyncio.sleep(2.0)
        arrivals = list(await ctx.receiver.arrivals())
        alive = service.alive and service.pid == pid
        ready = await service.is_ready()
        t_start = time.time()
        await cluster_sh("start", victim)
        killed = None
        back_s = time.time() - t_start
        synced, sync_s, sync_detail = await all_in_sync(stack.topics)
        exit_code = await service.stop()
    finally:
        if moved_task is not None and not moved_task.done():
            moved_task.cancel()
        await stop_all(service, reader, lag)
        if killed is not None:
            with contextlib.suppress(Exception):
                await cluster_sh("start", killed)
        await stack.close()
        await close_ports(ctx, ports)
    assert reader is not None
    assert lag is not None
    t = tally(reader, ids, arrivals)
    times = read_times(reader)
    docs = reader.all_docs()
    recorded_after = [
        float(d["_read_at"]) for d in docs if (parse_time(d.get("recorded_at")) or 0) > t_kill
    ]
    first_after = min(recorded_after) - t_kill if recorded_after else None
    gap, gap_at = longest_gap(times, t_kill - 1, t_final)
    back_at = rate_back(times, t_kill, gap_at + gap, 0.5)
    back = back_at - t_kill if back_at is not None else None
    before_gap = sum(1 for x in times if t_kill <= x <= gap_at)
    zero = lag.zero_after(t_kill)
    hooks_in_gap = sum(1 for a in arrivals if gap_at < a.at < gap_at + gap)
    said, quotes = waiting_lines([log], t_kill, t_final)
    r.fig(
        "events",
        f"{count:,} Complete events (2 per test id, 3 tracking codes answering at once), "
        f"published in {publish_s:.0f} s before the service started; per partition "
        + ", ".join(f"p{p} {n:,}" for p, n in sorted(per_partition.items())),
    )
    r.fig(
        "killed",
        f"node {victim} (SIGKILL) at {at_progress:,} final outcomes, t+{t_kill - t0:.1f} s: it "
        f"led events partitions {sorted(p for p, n in leaders.items() if n == victim)} "
        f"({load[victim]:,} events, the most of any broker), outcome partitions "
        f"{sorted(p for p, n in out_leaders.items() if n == victim)}; group coordinator: "
        f"node {coordinator if coordinator is not None else '?'}"
        + (" (the killed one)" if coordinator == victim else ""),
    )
    r.fig("leadership of its partitions moved", f"{secs(moved)} after the kill")
    r.fig(
        "outcomes",
        f"longest gap between outcomes read {gap:.1f} s, from kill {gap_at - t_kill:+.1f} s "
        f"({before_gap:,} outcomes read between the kill and the gap, acknowledged before "
        f"it); {hooks_in_gap:,} webhooks went out during it; first outcome recorded after the "
        f"kill read {secs(first_after)} after it; outcome rate back to half that of the 10 s "
        f"before the kill (in a one-second bucket after the gap) {secs(back)} after the kill",
    )
    r.fig(
        "recovery",
        f"all final outcomes {t_final - t_kill:.1f} s after the kill; lag back to 0 "
        f"{secs(zero - t_kill if zero else None)} after it",
    )
    r.fig("final outcomes", fmt_counter(t.finals))
    r.fig("lost", t.lost_text())
    r.fig("duplicates", t.dup_text())
    r.fig(
        "node restarted after the run",
        f"registered {back_s:.0f} s after `cluster.sh start {victim}`; replicas in sync "
        f"{sync_s:.0f} s later",
    )
    r.fig("service log lines after the kill", fmt_counter(said))
    for name, line in list(quotes.items())[:6]:
        r.quote(f"broker loss: {name}", line)
    r.check(
        "the killed broker led the busiest partitions",
        load[victim] == max(load.values()) and load[victim] > 0,
        f"node {victim}: {load[victim]:,} events of {count:,} on the partitions it led",
    )
    r.check("zero lost final outcomes and webhooks", all_final and t.lost == 0, t.lost_text())
    r.check(
        "recovered without help: same process alive and ready, lag back to 0",
        alive and ready and zero is not None,
        f"pid {pid} {'alive' if alive else 'GONE'}, /readyz {'200' if ready else 'not 200'}, "
        f"lag 0 {secs(zero - t_kill if zero else None)} after the kill",
    )
    r.check("clean stop at the end (exit 0)", exit_code == 0, f"exit status {exit_code}")
    r.check("the killed broker back and every replica in sync", synced, sync_detail)
    r.key = (
        f"node {victim} killed: stall {gap:.1f} s, all final +{t_final - t_kill:.0f} s, "
        f"{t.lost} lost, {t.dup_webhooks:,} dup webhooks, {t.dup_finals:,} dup finals"
    )


# ---------------------------------------------------------------- two brokers down


async def drill_two_down(ctx: Ctx, r: Result) -> None:
    rate = 100.0 if ctx.quick else 200.0
    window = 20.0 if ctx.quick else 50.0
    grace = 3.0
    await ensure_whole(ctx)
    stack = await DrillStack.create("twodown", CLUSTER, ctx.admin_dsn, replication=3)
    service = reader = lag = publisher = None
    ports: list[int] = []
    down: list[int] = []
    samples: list[tuple[float, float]] = []  # (time, itep_webhook_outcomes_total)
    try:
        codes, ports = await open_codes(ctx, stack, 3)
        await ctx.receiver.reset()
        reader = OutcomeReader(CLUSTER, stack.outcomes_topic)
        await reader.start()
        log = ctx.log_path(stack, "service")
        service = ServiceProc("service", cluster_env(stack), log)
        await service.start()
        await service.ready(60)
        pid = service.pid
        lag = LagWatch(stack)
        publisher = RatePublisher(
            stack, rate, lambda i: complete_event(f"W{i // 2:06d}", codes[(i // 2) % 3]), lag
        )
        await lag.start()
        await publisher.start()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))

        async def sample() -> float | None:
            got = await scrape(session, service.http_port)
            if got is None:
                return None
            value = got.get("itep_webhook_outcomes_total", 0.0)
            samples.append((time.time(), value))
            return value

        try:
            t0 = time.time()
            await asyncio.sleep(10.0)
            per_partition = Counter(publisher.partition.values())
            leaders = await partition_leaders(stack.events_topic)
            load = Counter(
                {n: sum(c for p, c in per_partition.items() if leaders[p] == n) for n in NODES}
            )
            first = max(NODES, key=lambda n: (load[n], -n))  # SIGTERM: a controlled shutdown
            second = max((n for n in NODES if n != first), key=lambda n: (load[n], -n))  # SIGKILL
            last = next(n for n in NODES if n not in (first, second))
            progress = [reader.count]
            t_stop = time.time()
            await cluster_sh("stop", first)
            down.append(first)
            stop_s = time.time() - t_stop
            ctx.say(f"  node {first} stopped (SIGTERM, {stop_s:.1f} s); two brokers left")
            await asyncio.sleep(10.0)
            progress.append(reader.count)
            # The drill's own publisher would time out (30 s) on one broker: it waits.
            publisher.pause()
            down.append(second)
            t_kill = await kill_node(second)
            ctx.say(f"  node {second} killed (SIGKILL): node {last} alone for {window:.0f} s")
            await asyncio.sleep(grace)
            m0 = await sample()
            hooks0 = len(await ctx.receiver.arrivals())
            while time.time() < t_kill + window:
                await sample()
                await asyncio.sleep(1.0)
            m1 = await sample()
            hooks1 = len(await ctx.receiver.arrivals())
            t_restart = time.time()
            await cluster_sh("start", second)
            down.remove(second)
            t_registered = time.time()
            publisher.resume()
            ctx.say(
                f"  node {second} back (registered {t_registered - t_restart:.1f} s after start)"
            )
            resumed = await wait_until(lambda: _resumed(sample, m1), 120, every=0.25)
            t_resumed = time.time() if resumed else None
            await asyncio.sleep(10.0)
            t_first_back = time.time()
            await cluster_sh("start", first)
            down.remove(first)
            first_back_s = time.time() - t_first_back
            await asyncio.sleep(5.0)
            await publisher.stop()
            t_published = time.time()
            ids = list(publisher.ids)
            all_final = await wait_until(
                lambda: reader.final_count(ids) >= len(ids),
                600,
                every=0.25,
                tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{len(ids):,} final outcomes"),
            )
            t_final = time.time()
            await wait_until(lambda: lag.zero_after(t_published) is not None, 60, every=0.5)
            await asyncio.sleep(2.0)
            arrivals = list(await ctx.receiver.arrivals())
            alive = service.alive and service.pid == pid
            ready = await service.is_ready()
            synced, sync_s, sync_detail = await all_in_sync(stack.topics)
            exit_code = await service.stop()
        finally:
            await session.close()
    finally:
        await stop_all(publisher, service, reader, lag)
        for node in down:
            with contextlib.suppress(Exception):
                await cluster_sh("start", node)
        await stack.close()
        await close_ports(ctx, ports)
    assert reader is not None
    assert lag is not None
    assert publisher is not None
    t = tally(reader, ids, arrivals)
    times = read_times(reader)
    in_window = sum(1 for x in times if t_kill + grace <= x <= t_restart)
    first_read = next((x for x in times if x >= t_restart), None)
    before = [lag_ for at, lag_ in lag.samples if t_stop - 10 <= at < t_stop and lag_ is not None]
    usual = statistics.median(before) if before else None
    caught_up = next(
        (
            at
            for at, lag_ in lag.samples
            if at >= t_restart
            and lag_ is not None
            and usual is not None
            and lag_ <= 1.5 * usual + rate
        ),
        None,
    )
    peak = max((lag_ for at, lag_ in lag.samples if at >= t_stop and lag_ is not None), default=0)
    zero = lag.zero_after(t_published)
    said, quotes = waiting_lines([log], t_kill, t_resumed or t_final)
    said_before, _ = waiting_lines([log], t_stop, t_kill)
    kafka_said = {
        k: v for k, v in said.items() if "waiting_for=Kafka" in k or k.startswith("aiokafka")
    }
    published_window = (m1 - m0) if m0 is not None and m1 is not None else None
    r.fig(
        "events",
        f"{len(ids):,} Complete events published at {rate:.0f}/s during the run (2 per test "
        f"id, 3 tracking codes answering at once; the drill's publisher paused from the "
        f"second broker's kill until it was back, {publisher.paused:.0f} s); one instance",
    )
    r.fig(
        "sequence",
        f"t+{t_stop - t0:.1f} s node {first} stopped (SIGTERM, controlled shutdown, "
        f"{stop_s:.1f} s); 10 s on two brokers ({progress[1] - progress[0]:,} outcomes read "
        f"meanwhile); node {second} killed (SIGKILL): node {last} alone, no controller "
        f"quorum, for {t_restart - t_kill:.1f} s; node {second} started again (registered "
        f"after {t_registered - t_restart:.1f} s); node {first} started 10 s later "
        f"(registered after {first_back_s:.1f} s); every replica in sync {sync_s:.0f} s "
        "after the run",
    )
    r.fig(
        "while one broker was left",
        f"outcomes acknowledged (the service's itep_webhook_outcomes_total) from kill + "
        f"{grace:.0f} s to the restart: "
        f"{published_window if published_window is not None else 'n/a'}; outcome records "
        f"read: {in_window:,}; webhooks that went out meanwhile: {hooks1 - hooks0:,} (until "
        "1.5 x MAX_IN_FLIGHT events were unfinished)",
    )
    r.fig(
        "resumption",
        f"outcomes acknowledged again {secs(t_resumed - t_restart if t_resumed else None)} "
        f"after `cluster.sh start {second}` "
        f"({secs(t_resumed - t_registered if t_resumed else None)} after it was registered); "
        f"first outcome read {secs(first_read - t_restart if first_read else None)} after the "
        f"start; lag (median {usual if usual is not None else 'n/a'} before the faults, peak "
        f"{peak:,}) back to 1.5 x its usual level + 1 s of events "
        f"{secs(caught_up - t_restart if caught_up else None)} after the start; all final "
        f"outcomes {t_final - t_published:.1f} s after the last event was published, lag 0 "
        f"{secs(zero - t_published if zero else None)} after it",
    )
    r.fig("final outcomes", fmt_counter(t.finals))
    r.fig("lost", t.lost_text())
    r.fig("duplicates", t.dup_text())
    r.fig("service log lines, one broker stopped (two left)", fmt_counter(said_before))
    r.fig("service log lines, one broker left until writes resumed", fmt_counter(said))
    for name, line in quotes.items():
        r.quote(f"two brokers down: {name}", line)
    r.check(
        "outcome publishing stalled while one broker was left (acks=all, min.insync.replicas 2)",
        published_window == 0 and in_window == 0,
        f"{published_window} outcomes acknowledged, {in_window} records read in "
        f"{t_restart - t_kill - grace:.0f} s",
    )
    r.check(
        "and resumed once the killed broker was back",
        t_resumed is not None,
        f"outcomes acknowledged again {secs(t_resumed - t_restart if t_resumed else None)} "
        "after its start",
    )
    r.check("zero lost final outcomes and webhooks", all_final and t.lost == 0, t.lost_text())
    r.check(
        "the service said what it waited for (waiting_for=Kafka lines or aiokafka's warnings)",
        bool(kafka_said),
        fmt_counter(Counter(kafka_said)) or "nothing",
    )
    r.check(
        "recovered without help: same process alive and ready",
        alive and ready,
        f"pid {pid} {'alive' if alive else 'GONE'}, /readyz {'200' if ready else 'not 200'}",
    )
    r.check("clean stop at the end (exit 0)", exit_code == 0, f"exit status {exit_code}")
    r.check("both brokers back and every replica in sync", synced, sync_detail)
    r.key = (
        f"{t_restart - t_kill:.0f} s on one broker: {published_window} outcomes acked; resumed "
        f"{secs(t_resumed - t_restart if t_resumed else None)} after the restart; {t.lost} lost, "
        f"{t.dup_webhooks:,} dup webhooks"
    )


async def _resumed(sample: Callable[[], Any], before: float | None) -> bool:
    value = await sample()
    return value is not None and before is not None and value > before


# ----------------------------------------------------------------------- instance loss


async def drill_instance_loss(ctx: Ctx, r: Result) -> None:
    rate = 150.0 if ctx.quick else 200.0
    kills = 2 if ctx.quick else 4
    every = 20.0
    await ensure_whole(ctx)
    stack = await DrillStack.create("instloss", CLUSTER, ctx.admin_dsn, replication=3)
    reader = lag = publisher = None
    ports: list[int] = []
    group: Instances | None = None
    cycles: list[dict[str, Any]] = []
    try:
        codes, ports = await open_codes(ctx, stack, 3)
        await ctx.receiver.reset()
        reader = OutcomeReader(CLUSTER, stack.outcomes_topic)
        await reader.start()
        group = Instances(ctx, stack, cluster_env(stack), "instance")
        await group.launch_all(3)
        whole = await group.whole()
        lag = LagWatch(stack)
        publisher = RatePublisher(
            stack, rate, lambda i: complete_event(f"N{i // 2:06d}", codes[(i // 2) % 3]), lag
        )
        await lag.start()
        await publisher.start()
        t0 = time.time()
        for k in range(kills):
            await asyncio.sleep(max(0.0, t0 + every * (k + 1) - time.time()))
            victim = k % 3
            proc = group.slots[victim]
            assert proc is not None
            # Not in the middle of a rebalance: the victim holds its share.
            await group.whole(60)
            held = assignment_now(group.logs[victim])
            survivors = [i for i in group.live() if i != victim]
            t_kill = time.time()
            await proc.kill()
            ctx.say(
                f"  SIGKILL instance {victim} (partitions {sorted(held)}) at t+{t_kill - t0:.0f} s"
            )

            def taken(
                held: set[int] = held, survivors: list[int] = survivors, t_kill: float = t_kill
            ) -> bool:
                got: set[int] = set()
                for i in survivors:
                    for _, parts in assigned_after(group.logs[i], t_kill):
                        got |= parts
                return held <= got

            took = await wait_until(taken, 90, every=0.2)
            t_taken = time.time()
            survivor_docs = log_docs(group.logs[i] for i in survivors)
            revoked = [
                d["_at"]
                for d in survivor_docs
                if d.get("event") == "partitions_revoked" and d["_at"] > t_kill
            ]
            assigned: dict[int, float] = {}
            for d in sorted(survivor_docs, key=lambda d: d["_at"]):
                if d.get("event") == "partitions_assigned" and d["_at"] > t_kill:
                    for p in partitions_of(d) & held:
                        assigned.setdefault(p, d["_at"])
            _, ready_s = await group.launch(victim)
            replaced = await group.holding(victim) and await group.whole(60)
            cycles.append(
                {
                    "slot": victim,
                    "at": t_kill - t0,
                    "t_kill": t_kill,
                    "held": held,
                    "taken": took,
                    "noticed": min(revoked) - t_kill if revoked else None,
                    "assigned": max(assigned.values()) - t_kill if took and assigned else None,
                    "seen_at": t_taken - t_kill,
                    "ready": ready_s,
                    "replaced": replaced,
                }
            )
        await asyncio.sleep(max(0.0, t0 + every * (kills + 1) - time.time()))
        await publisher.stop()
        ids = list(publisher.ids)
        all_final = await wait_until(
            lambda: reader.final_count(ids) >= len(ids),
            300,
            every=0.5,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{len(ids):,} final outcomes"),
        )
        t_final = time.time()
        await asyncio.sleep(2.0)
        arrivals = list(await ctx.receiver.arrivals())
        alive = len(group.live())
        await group.stop()
    finally:
        await stop_all(publisher, group, reader, lag)
        await stack.close()
        await close_ports(ctx, ports)
    assert reader is not None
    assert publisher is not None
    assert group is not None
    t = tally(reader, ids, arrivals)
    ok = [a for a in arrivals if a.answer == 200]
    bound = SESSION_TIMEOUT + HEARTBEAT_INTERVAL + 5.0
    lines = []
    for n, c in enumerate(cycles, 1):
        first_hook = min(
            (
                a.at
                for a in ok
                if a.at > c["t_kill"] + KILL_SLACK
                and publisher.partition.get(a.webhook_id) in c["held"]
            ),
            default=None,
        )
        c["first_hook"] = first_hook - c["t_kill"] if first_hook else None
        lines.append(
            f"kill {n} (instance {c['slot']}, t+{c['at']:.0f} s, partitions {sorted(c['held'])}): "
            f"survivors revoked (rebalance began, drained, committed) {secs(c['noticed'])} "
            f"after, its partitions assigned to survivors {secs(c['assigned'])} after, first "
            f"webhook of them {secs(c['first_hook'])} after; replacement ready in "
            f"{c['ready']:.1f} s"
        )
    takeovers = [c["assigned"] for c in cycles if c["assigned"] is not None]
    r.fig(
        "run",
        f"3 instances, one consumer group; {len(ids):,} Complete events published at "
        f"{rate:.0f}/s during the run (2 per test id, 3 tracking codes answering at once; the "
        f"publisher fell behind its schedule by {publisher.behind:.1f} s at most); group whole "
        f"before publishing: {whole}",
    )
    r.fig(
        "session timeout",
        f"{SESSION_TIMEOUT:.0f} s (aiokafka's default), heartbeat every "
        f"{HEARTBEAT_INTERVAL:.0f} s (the service's); rebalance timeout "
        f"{DRAIN_TIMEOUT + REBALANCE_MARGIN:.0f} s (DRAIN_TIMEOUT + {REBALANCE_MARGIN:.0f} s)",
    )
    for n, line in enumerate(lines, 1):
        r.fig(f"kill {n}", line.split(": ", 1)[1])
    if takeovers:
        r.fig(
            "takeover (kill to its partitions assigned to survivors)",
            f"mean {statistics.fmean(takeovers):.1f} s, max {max(takeovers):.1f} s against a "
            f"{SESSION_TIMEOUT:.0f} s session timeout",
        )
    r.fig(
        "all final outcomes",
        f"{t_final - cycles[-1]['t_kill']:.1f} s after the last kill" if cycles else "n/a",
    )
    r.fig("final outcomes", fmt_counter(t.finals))
    r.fig("lost", t.lost_text())
    r.fig("duplicates (SIGKILL: redone, by design)", t.dup_text())
    r.check(
        f"{kills} SIGKILLs, one every {every:.0f} s, each instance replaced",
        len(cycles) == kills and all(c["replaced"] and c["held"] for c in cycles),
        f"{len(cycles)} kills, {sum(1 for c in cycles if c['replaced'])} replacements holding "
        f"partitions; the victims held {[sorted(c['held']) for c in cycles]}",
    )
    r.check(
        f"its partitions taken over within the session timeout + one heartbeat + 5 s "
        f"({bound:.0f} s): detection takes the session timeout, then the rebalance",
        len(takeovers) == kills and all(x <= bound for x in takeovers),
        ", ".join(f"{x:.1f} s" for x in takeovers) or "none measured",
    )
    r.check("zero lost final outcomes and webhooks", all_final and t.lost == 0, t.lost_text())
    r.check("three instances alive at the end", alive == 3, f"{alive} alive")
    r.key = (
        f"{len(cycles)} kills; takeover {', '.join(f'{x:.1f}' for x in takeovers)} s "
        f"(session {SESSION_TIMEOUT:.0f} s); {t.lost} lost, {t.dup_webhooks:,} dup webhooks"
    )


# --------------------------------------------------------------------- rolling upgrade


async def drill_rolling_upgrade(ctx: Ctx, r: Result) -> None:
    rate = 120.0 if ctx.quick else 200.0
    passes = 1 if ctx.quick else 2
    settle = 5.0
    await ensure_whole(ctx)
    stack = await DrillStack.create("rolling", CLUSTER, ctx.admin_dsn, replication=3)
    reader = lag = publisher = None
    ports: list[int] = []
    group: Instances | None = None
    restarts: list[dict[str, Any]] = []
    try:
        codes, ports = await open_codes(ctx, stack, 3)
        await ctx.receiver.reset()
        reader = OutcomeReader(CLUSTER, stack.outcomes_topic)
        await reader.start()
        group = Instances(ctx, stack, cluster_env(stack), "instance")
        await group.launch_all(3)
        whole = await group.whole()
        lag = LagWatch(stack)
        publisher = RatePublisher(
            stack, rate, lambda i: complete_event(f"U{i // 2:06d}", codes[(i // 2) % 3]), lag
        )
        await lag.start()
        await publisher.start()
        t0 = time.time()
        await asyncio.sleep(10.0)
        for _ in range(passes):
            for slot in range(3):
                proc = group.slots[slot]
                assert proc is not None
                old_log = group.logs[slot]
                t_term = time.time()
                status = await proc.stop(timeout=DRAIN_TIMEOUT + 30)
                stop_s = time.time() - t_term
                _, ready_s = await group.launch(slot)
                holds = await group.holding(slot)
                whole_again = await group.whole(60)
                t_whole = time.time()
                stopped = [d for d in log_docs([old_log]) if d.get("event") == "pipeline_stopped"]
                restarts.append(
                    {
                        "slot": slot,
                        "at": t_term - t0,
                        "t_term": t_term,
                        "status": status,
                        "stop_s": stop_s,
                        "ready_s": ready_s,
                        "holds": holds and whole_again,
                        "whole_s": t_whole - t_term,
                        "drained": stopped[-1].get("drained") if stopped else None,
                        "left": stopped[-1].get("left") if stopped else None,
                        "service_stopped": any(
                            d.get("event") == "service_stopped" for d in log_docs([old_log])
                        ),
                    }
                )
                ctx.say(
                    f"  instance {slot}: SIGTERM -> exit {status} in {stop_s:.1f} s, "
                    f"replacement ready in {ready_s:.1f} s"
                )
                await asyncio.sleep(settle)
        await publisher.stop()
        ids = list(publisher.ids)
        all_final = await wait_until(
            lambda: reader.final_count(ids) >= len(ids),
            300,
            every=0.5,
            tick=lambda: ctx.say(f"  {reader.final_count(ids):,}/{len(ids):,} final outcomes"),
        )
        await asyncio.sleep(2.0)
        arrivals = list(await ctx.receiver.arrivals())
        alive = len(group.live())
        await group.stop()
    finally:
        await stop_all(publisher, group, reader, lag)
        await stack.close()
        await close_ports(ctx, ports)
    assert reader is not None
    assert publisher is not None
    assert group is not None
    t = tally(reader, ids, arrivals)
    times = sorted(a.at for a in arrivals)
    for c in restarts:
        c["gap"], _ = longest_gap(times, c["t_term"], c["t_term"] + c["whole_s"] + settle)
    all_logs = LogSummaryLite(group.every_log)
    r.fig(
        "run",
        f"3 instances, one consumer group; {len(ids):,} Complete events published at "
        f"{rate:.0f}/s during the run (2 per test id, 3 tracking codes answering at once); "
        f"group whole before publishing: {whole}; {passes} pass(es) over the 3 instances, "
        f"{settle:.0f} s apart once the group was whole again",
    )
    for n, c in enumerate(restarts, 1):
        r.fig(
            f"restart {n} (instance {c['slot']}, t+{c['at']:.0f} s)",
            f"SIGTERM -> exit {c['status']} in {c['stop_s']:.1f} s (pipeline_stopped drained="
            f"{c['drained']}, left={c['left']}); replacement ready in {c['ready_s']:.1f} s; "
            f"group whole again {c['whole_s']:.1f} s after the SIGTERM; longest gap between "
            f"webhooks {c['gap']:.1f} s",
        )
    r.fig("final outcomes", fmt_counter(t.finals))
    r.fig("lost", t.lost_text())
    r.fig("duplicates", t.dup_text())
    r.fig(
        "log lines over every instance",
        f"partitions_revoked {all_logs.count('partitions_revoked')} (drained=false "
        f"{all_logs.count('partitions_revoked', drained=False)}), partitions_assigned "
        f"{all_logs.count('partitions_assigned')}, pipeline_stopped drained=false "
        f"{all_logs.count('pipeline_stopped', drained=False)}, service_killed "
        f"{all_logs.count('service_killed')}",
    )
    r.check(
        f"{3 * passes} clean stops: exit 0, drained, service_stopped, replaced",
        len(restarts) == 3 * passes
        and all(
            c["status"] == 0 and c["drained"] is True and c["service_stopped"] and c["holds"]
            for c in restarts
        ),
        "; ".join(
            f"#{n} exit {c['status']} drained={c['drained']} left={c['left']}"
            for n, c in enumerate(restarts, 1)
        ),
    )
    r.check("zero lost final outcomes and webhooks", all_final and t.lost == 0, t.lost_text())
    r.check(
        "zero duplicate webhooks and final outcomes (a clean stop drains and commits)",
        t.dup_webhooks == 0 and t.dup_finals == 0,
        t.dup_text(),
    )
    r.check(
        "every revocation drained within DRAIN_TIMEOUT",
        all_logs.count("partitions_revoked", drained=False) == 0,
        f"{all_logs.count('partitions_revoked', drained=False)} revocations with drained=false",
    )
    r.check("three instances alive at the end", alive == 3, f"{alive} alive")
    r.key = (
        f"{len(restarts)} rolling restarts: {t.lost} lost, {t.dup_webhooks} dup webhooks, "
        f"{t.dup_finals} dup finals"
    )


class LogSummaryLite:
    """Counts of the service's own log lines by event and field values."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.docs = [d for d in log_docs(paths) if "logger" not in d]

    def count(self, event: str, **fields: object) -> int:
        return sum(
            1
            for d in self.docs
            if d.get("event") == event and all(d.get(k) == v for k, v in fields.items())
        )


# ---------------------------------------------------------------------------- scaling


async def drill_scaling(ctx: Ctx, r: Result) -> None:
    latency = 0.2
    max_in_flight = 30
    counted = 15.0 if ctx.quick else 30.0  # seconds over which arrivals are counted
    warmup = 5.0
    backlog = 10_000 if ctx.quick else 30_000
    await ensure_whole(ctx)
    stack = await DrillStack.create("scaling", CLUSTER, ctx.admin_dsn, replication=3)
    ports: list[int] = []
    runs: list[dict[str, Any]] = []
    group: Instances | None = None
    try:
        codes, ports = await open_codes(ctx, stack, 3, delay=latency)
        # One event per test id: no event waits behind another of its test.
        events = [complete_event(f"G{i:06d}", codes[i % 3]) for i in range(backlog)]
        started = time.monotonic()
        await publish(CLUSTER, stack.events_topic, events)
        publish_s = time.monotonic() - started
        for k in (1, 2, 3):
            ctx.say(f"scaling run: {k} instance(s)")
            await ctx.receiver.reset()
            env = cluster_env(
                stack,
                CONSUMER_GROUP=f"{stack.group}-{k}",
                MAX_IN_FLIGHT=str(max_in_flight),
                DRAIN_TIMEOUT="10s",
            )
            group = Instances(ctx, stack, env, f"scaling{k}")
            await group.launch_all(k)
            whole = await group.whole()
            await asyncio.sleep(warmup)
            inflight: list[float] = []
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
            try:
                cpu0 = cpu_times()
                svc0 = [p.cpu_seconds() or 0.0 for p in group.slots if p is not None]
                t_a = time.time()
                while time.time() < t_a + counted:
                    got = await asyncio.gather(
                        *(scrape(session, p.http_port) for p in group.slots if p is not None)
                    )
                    inflight.append(sum((g or {}).get("itep_events_in_flight", 0.0) for g in got))
                    await asyncio.sleep(0.5)
                t_b = time.time()
                cpu1 = cpu_times()
                svc1 = [p.cpu_seconds() or 0.0 for p in group.slots if p is not None]
            finally:
                await session.close()
            arrivals = list(await ctx.receiver.arrivals())
            await group.stop()
            group = None
            inside = [a for a in arrivals if t_a <= a.at < t_b]
            last_second = sum(1 for a in inside if a.at >= t_b - 1.0)
            rate = len(inside) / (t_b - t_a)
            busy = (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]) if cpu1[1] > cpu0[1] else 0.0
            runs.append(
                {
                    "k": k,
                    "rate": rate,
                    "count": len(inside),
                    "whole": whole,
                    "inflight": statistics.fmean(inflight) if inflight else 0.0,
                    "busy": busy,
                    "svc_cpu": sum(svc1) - sum(svc0),
                    "last_second": last_second,
                    "seconds": t_b - t_a,
                }
            )
            ctx.say(f"  {rate:,.0f} webhooks/s, CPU {busy:.0%} busy")
    finally:
        if group is not None:
            await group.stop()
        await stack.close()
        await close_ports(ctx, ports)
    nominal = max_in_flight / latency
    # At most MAX_IN_FLIGHT attempts at once, each answered after the latency, plus those
    # already under way when the count started.
    upper = nominal + max_in_flight / counted
    one = runs[0]["rate"] if runs else 0.0
    r.fig(
        "set-up",
        f"{backlog:,} Complete events (one per test id, 3 tracking codes) published first in "
        f"{publish_s:.0f} s; receivers answer 200 after {latency * 1000:.0f} ms; "
        f"MAX_IN_FLIGHT={max_in_flight} per instance; each run a fresh consumer group from the "
        f"earliest offset, measured over {counted:.0f} s after the group is whole + "
        f"{warmup:.0f} s",
    )
    r.fig(
        "concurrency bound per instance",
        f"MAX_IN_FLIGHT / latency = {nominal:.0f} webhooks/s: the sender holds at most "
        f"MAX_IN_FLIGHT attempts at once (the fetch window is half as many events again); "
        f"the check allows the attempts under way when the count starts, {upper:.1f} "
        f"webhooks/s",
    )
    for run in runs:
        k = run["k"]
        r.fig(
            f"{k} instance{'s' if k > 1 else ''}",
            f"{run['rate']:,.0f} webhooks/s ({run['count']:,} in {run['seconds']:.1f} s) = "
            f"{run['rate'] / (k * nominal):.2f} x the bound {k} x {nominal:.0f}; "
            f"{run['rate'] / one if one else 0:.2f} x one instance; mean events in flight "
            f"{run['inflight']:.0f} (Little: {run['inflight'] / latency:,.0f}/s at "
            f"{latency * 1000:.0f} ms; measured, each event was in flight "
            f"{run['inflight'] / run['rate'] * 1000 if run['rate'] else 0:.0f} ms); machine CPU {run['busy']:.0%} busy, the services' "
            f"{run['svc_cpu'] / run['seconds']:.2f} cores",
        )
    by_k = {run["k"]: run for run in runs}
    r.check(
        "every run measured with the whole group and a backlog left at the end",
        len(runs) == 3 and all(run["whole"] and run["last_second"] > 0 for run in runs),
        "; ".join(
            f"{run['k']}: whole {run['whole']}, {run['last_second']} webhooks in the last second"
            for run in runs
        ),
    )
    r.check(
        "the cores were not the limit: the machine under 90% busy in every window",
        bool(runs) and all(run["busy"] < 0.9 for run in runs),
        ", ".join(f"{run['k']}: {run['busy']:.0%}" for run in runs),
    )
    r.check(
        "within the concurrency bound: at most k x MAX_IN_FLIGHT x (1 / latency + 1 / counted s)",
        bool(runs) and all(run["rate"] <= run["k"] * upper for run in runs),
        ", ".join(f"{run['k']}: {run['rate']:,.0f} <= {run['k'] * upper:,.0f}" for run in runs),
    )
    r.check(
        "throughput scales with instances: k instances >= 0.8 x k x one instance",
        len(by_k) == 3 and all(by_k[k]["rate"] >= 0.8 * k * one for k in (2, 3)),
        ", ".join(f"{k}: {by_k[k]['rate'] / one:.2f} x" for k in by_k if one),
    )
    r.key = ", ".join(
        f"{run['k']}: {run['rate']:,.0f}/s ({run['rate'] / (run['k'] * nominal):.2f} x bound)"
        for run in runs
    )


# --------------------------------------------------------------------------- registry

_EVERY_NODE = (
    "On the local three-node cluster of `make cluster-up` (topics of 6 partitions, 3 "
    "replicas, `min.insync.replicas` 2, created by the service's own start-up code; the "
    "service with the three brokers in `KAFKA_BOOTSTRAP_SERVERS` and "
    "`TOPIC_REPLICATION_FACTOR=3`; skipped when the cluster is not up). "
)

CLUSTER_DRILLS: list[tuple[str, str, str, str, float, Callable[..., Any]]] = [
    (
        "cluster-broker-loss",
        "SIGKILL the broker leading the busiest partitions: nothing lost",
        _EVERY_NODE
        + "50,000 Complete events (2 per test id) to 3 tracking codes answering at once, "
        "published before one service instance starts. Once 30% have a final outcome, the "
        "broker leading the events partitions that hold the most events is SIGKILLed (a "
        "crash: the partitions it led have no leader until the controller fences it, and "
        "acks=all writes wait for it meanwhile); it stays down until every event has a final "
        "outcome, then is started again. Measured: when leadership moved, the longest gap "
        "between outcomes read, when the first outcome recorded after the kill was read, "
        "when the outcome rate was back to half of the 10 s before the kill, when every "
        "event had a final outcome and when the group's lag was back to 0; duplicates "
        "counted. Passes when every event has a final outcome and a webhook answered 200, the "
        "same process recovered by itself (alive, ready, lag 0), and the broker rejoined with "
        "every replica in sync.",
        "10,000 events",
        900,
        drill_broker_loss,
    ),
    (
        "cluster-two-brokers-down",
        "a broker restarted while a second one is down: writes wait, then resume",
        _EVERY_NODE + "One instance; Complete events (2 per test id, 3 tracking codes answering at "
        "once) published at 200/s throughout, except while one broker is left (the drill's "
        "publisher would time out). After 10 s the broker leading the most events is stopped "
        "(SIGTERM, controlled shutdown); 10 s later a second one is SIGKILLed, leaving one "
        "broker: "
        "acks=all writes cannot reach `min.insync.replicas` 2 and, without a controller "
        "quorum, no in-sync set can shrink. After 50 s the killed broker is started again, "
        "and the first one 10 s after that. The service's `itep_webhook_outcomes_total` is "
        "scraped every second. Passes when no outcome is acknowledged (nor read) while one "
        "broker is left (from 3 s after the kill), publishing resumes after the restart, "
        "every event has a final outcome and a webhook answered 200, the service logged what "
        "it waited for (its `waiting_for=Kafka` lines or aiokafka's warnings, counted and "
        "quoted), the same process is alive and ready, and every replica is in sync at the "
        "end.",
        "100 events/s, one broker left for 20 s",
        900,
        drill_two_down,
    ),
    (
        "cluster-instance-loss",
        "three instances, one SIGKILLed every 20 s: partitions taken over, nothing lost",
        _EVERY_NODE + "Three instances in one consumer group; Complete events (2 per test id, 3 "
        "tracking codes answering at once) published at 200/s for 100 s. Every 20 s one "
        "instance (in turn) is SIGKILLed; once its partitions are assigned to the survivors "
        "(read from their `partitions_assigned` lines) a replacement is started. Measured per "
        "kill: when the survivors revoked (the rebalance began), when the dead instance's "
        "partitions were assigned to survivors, and the first webhook of those partitions "
        "after the kill, against the session timeout (aiokafka's default 10 s, which the "
        "service keeps). Passes when every event has a final outcome and a webhook answered "
        "200, and each takeover took at most the session timeout + one heartbeat interval + "
        "5 s (detection is the session timeout; the rebalance, in which each survivor drains "
        "and commits first, comes on top). Duplicates are counted, not failed.",
        "150 events/s for 60 s, 2 kills",
        900,
        drill_instance_loss,
    ),
    (
        "cluster-rolling-upgrade",
        "three instances restarted in turn with SIGTERM: nothing lost, nothing twice",
        _EVERY_NODE + "Three instances in one consumer group; Complete events (2 per test id, 3 "
        "tracking codes answering at once) published at 200/s throughout. Two passes over "
        "the instances: each in turn gets SIGTERM, and once it has exited a replacement is "
        "started; the next one follows 5 s after the group holds every partition again. "
        "Passes when every stop exits 0 with `pipeline_stopped` `drained: true` and "
        "`service_stopped`, no revocation overruns `DRAIN_TIMEOUT`, every event has a final "
        "outcome and a webhook answered 200, and no webhook-id is received twice and no "
        "event has two final outcomes.",
        "120 events/s, one pass (3 restarts)",
        900,
        drill_rolling_upgrade,
    ),
    (
        "cluster-scaling",
        "webhooks/s with 1, 2 and 3 instances against the concurrency bound",
        _EVERY_NODE
        + "30,000 Complete events (one per test id) published first; receivers answer 200 "
        "after 200 ms and `MAX_IN_FLIGHT=30`, so that one instance is bound by concurrency "
        "(30 / 0.2 s = 150 webhooks/s), not by the 2 cores. For 1, 2 and 3 instances, each "
        "run a fresh consumer group from the earliest offset: once every partition is held "
        "and 5 s more, webhooks arriving at the receiver are counted over 30 s, with the "
        "summed `itep_events_in_flight` gauges sampled twice a second and the machine's CPU "
        "from /proc/stat. Passes when each run had the whole group and backlog to the end, "
        "the machine stayed under 90% busy (the cores were not the limit), every rate is "
        "within k x 30 x (1 / 0.2 s + 1 / 30 s) (the sender holds at most `MAX_IN_FLIGHT` "
        "attempts at once, each 0.2 s long, plus those under way when the count starts), "
        "and k instances deliver at least 0.8 x k x one instance.",
        "10,000 events, 15 s windows",
        600,
        drill_scaling,
    ),
]
