"""One scenario's world: fresh topics, tracking codes, receivers, events, and relay runs.

``async with Workload(ctx, "fast", delay=0)`` starts a receiver process with one port per
tracking code, adds the codes (``BENCH-<run>-NN``, each signed, each pointing at its own
port, so that the per-origin limit binds per code as with real partners) and creates the
input topic. ``publish()`` loads events. ``run()`` starts one relay against the topic with
a consumer group (and, for the service, outcome and dead-letter topics) of its own,
measures its window (``bench.window``), stops it and resets the receivers' counts, so the
service, the naive consumer and the faststream relay can each read the same events. On
exit every topic is deleted and the codes are dropped.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

import orjson
from aiokafka import AIOKafkaConsumer

from bench.context import Context
from bench.events import EventMix, publish_backlog
from bench.receiver import ReceiverProcess
from bench.stack import (
    Command,
    RelayProcess,
    add_tracking_codes,
    free_port,
    new_run_id,
    remove_tracking_codes,
)
from bench.window import Window, measure


@dataclass(frozen=True, slots=True)
class RelayRun:
    relay: RelayProcess
    group: str
    end: Literal["commits", "arrivals"]
    outcomes_topic: str | None = None


BENCH_PREFIX: Final = "BENCH-"  # every tracking code a workload adds starts with it


def service_log_level() -> str:
    """The service's LOG_LEVEL: ``info``, its default, unless ``BENCH_LOG_LEVEL`` says."""
    return os.environ.get("BENCH_LOG_LEVEL", "info")


class Workload:
    def __init__(self, ctx: Context, name: str, *, delay: float, stamps: bool = False) -> None:
        self.ctx = ctx
        self.name = name
        self.run_id = new_run_id()
        self.prefix = f"{BENCH_PREFIX}{self.run_id}-"
        self.codes = [f"{self.prefix}{i:02d}" for i in range(ctx.plan.codes)]
        self.topic = f"bench-{self.run_id}-events"
        self.receiver = ReceiverProcess(len(self.codes), delay, stamps=stamps)
        self.mix = EventMix(run=self.run_id, codes=self.codes, tests=ctx.plan.tests)
        self.published = 0
        self._topics = [self.topic]
        self._relays = 0

    async def __aenter__(self) -> Workload:
        self.ctx.say(f"{self.name}: receivers, tracking codes and topic (run {self.run_id})")
        await self.receiver.start(self.ctx.log_dir / f"{self.name}-{self.run_id}-receiver.log")
        await self.ctx.kafka.create_topics([self.topic])
        await add_tracking_codes(self.ctx.dsn, self.codes, self.receiver.urls)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.receiver.stop()
        await self.ctx.kafka.delete_topics(self._topics)
        await remove_tracking_codes(self.ctx.dsn, self.prefix)

    async def publish(self, count: int) -> None:
        seconds = await publish_backlog(
            self.ctx.bootstrap, self.topic, self.mix, count, self.ctx.say
        )
        self.published += count
        self.ctx.say(f"{self.name}: {count:,} events published in {seconds:.1f} s")

    def _log(self, relay: str) -> Path:
        self._relays += 1
        return self.ctx.log_dir / f"{self.name}-{self.run_id}-{self._relays}-{relay}.log"

    async def service(self, env: dict[str, str] | None = None, *, processes: int = 1) -> RelayRun:
        """The service: ``python -m consumer run`` (``--processes N``, or N instances of one
        group while that flag does not exist), default settings unless ``env`` says."""
        n = self._relays + 1
        outcomes, dlq = f"bench-{self.run_id}-{n}-outcomes", f"bench-{self.run_id}-{n}-dlq"
        await self.ctx.kafka.create_topics([outcomes, dlq])
        self._topics += [outcomes, dlq]
        group = f"bench-{self.run_id}-{n}-service"
        base = {
            "EXAM_EVENTS_TOPIC": self.topic,
            "OUTCOMES_TOPIC": outcomes,
            "DEAD_LETTER_TOPIC": dlq,
            "CONSUMER_GROUP": group,
            "ALLOW_PRIVATE_ENDPOINTS": "true",
            "LOG_LEVEL": service_log_level(),
            **(env or {}),
        }
        if processes == 1 or self.ctx.processes_flag:
            flag = ("--processes", str(processes)) if processes > 1 else ()
            port = free_port()
            commands = [Command("consumer", ("run", *flag), {**base, "HTTP_PORT": str(port)}, port)]
        else:
            ports = [free_port() for _ in range(processes)]
            commands = [
                Command("consumer", ("run",), {**base, "HTTP_PORT": str(port)}, port)
                for port in ports
            ]
        relay = RelayProcess("service", commands, self._log("service"))
        return RelayRun(relay, group, "commits", outcomes)

    async def drain_with_service(
        self,
        events: int,
        cap: float,
        env: dict[str, str] | None = None,
        *,
        processes: int = 1,
    ) -> tuple[Window, str]:
        """The service over the ``events`` published: its window, and the note on any
        outcome other than one ``delivered`` per event."""
        relay = await self.service(env, processes=processes)
        window = await self.run(relay, cap=cap)
        return window, outcome_note(await self.outcome_counts(relay), events)

    def naive(self) -> RelayRun:
        group = f"bench-{self.run_id}-{self._relays + 1}-naive"
        command = Command("bench.naive", ("--topic", self.topic, "--group", group), {})
        return RelayRun(RelayProcess("naive", [command], self._log("naive")), group, "commits")

    def faststream(self) -> RelayRun:
        group = f"bench-{self.run_id}-{self._relays + 1}-faststream"
        settings = self.ctx.settings
        args = ("--topic", self.topic, "--group", group, "--code-prefix", self.prefix)
        limits = ("--workers", str(settings.max_in_flight), "--per-host")
        command = Command(
            "bench.relay_faststream", (*args, *limits, str(settings.max_in_flight_per_host)), {}
        )
        relay = RelayProcess("faststream", [command], self._log("faststream"))
        # Acks come before the work, so only the receivers can tell when it is done.
        return RelayRun(relay, group, "arrivals")

    async def run(self, run: RelayRun, *, cap: float, memory_every: float | None = None) -> Window:
        """Start the relay, measure its window over the published events, stop it."""
        await self.receiver.reset()
        await run.relay.start()
        try:
            window = await measure(
                run.relay,
                self.receiver,
                self.ctx.kafka,
                group=run.group,
                topic=self.topic,
                target=self.published,
                cap=cap,
                end=run.end,
                say=self.ctx.say,
                memory_every=memory_every,
            )
        finally:
            await run.relay.stop()
        self.ctx.say(
            f"{self.name}/{run.relay.name}: {window.webhooks:,} webhooks in {window.seconds:.1f} s"
            f" = {window.rate:,.0f}/s, {window.cpu_ms:.3f} ms CPU each"
            + ("" if window.drained else " (window cut at its cap)")
        )
        return window

    async def outcome_counts(self, run: RelayRun) -> collections.Counter[str]:
        """The service run's outcome records, counted by ``outcome`` (``reason``)."""
        counts: collections.Counter[str] = collections.Counter()
        if run.outcomes_topic is None:
            return counts
        total = await self.ctx.kafka.end_total(run.outcomes_topic)
        consumer = AIOKafkaConsumer(
            run.outcomes_topic,
            bootstrap_servers=self.ctx.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        try:
            seen = 0
            while seen < total:
                batch = await consumer.getmany(timeout_ms=1000, max_records=50_000)
                if not batch:
                    break
                for records in batch.values():
                    for record in records:
                        doc = orjson.loads(record.value)
                        reason = f" ({doc['reason']})" if doc.get("reason") else ""
                        counts[f"{doc['outcome']}{reason}"] += 1
                        seen += 1
        finally:
            await consumer.stop()
        return counts


def outcome_note(counts: collections.Counter[str], events: int) -> str:
    """``""`` when every event ended delivered once, else what else the outcomes say."""
    parts = [f"{n:,} {name}" for name, n in counts.most_common() if name != "delivered"]
    delivered = counts.get("delivered", 0)
    if delivered > events:
        # Only a rebalance (or a crash) makes the service redo finished, uncommitted events.
        parts.append(f"{delivered - events:,} delivered twice (events redone after a rebalance)")
    elif delivered < events:
        parts.append(f"{events - delivered:,} not delivered by the stop")
    return ", ".join(parts)
