"""Assemble the service from one ``Settings`` and run it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from consumer.delivery.breaker import BreakerPolicy, BreakerState, Transition
from consumer.delivery.deliverer import Deliverer, WaitingTests
from consumer.delivery.endpoints import EndpointGate
from consumer.delivery.schedule import ScheduleStore
from consumer.delivery.scheduler import ScheduleRunner
from consumer.delivery.sender import WebhookSender
from consumer.delivery.waiting_room import WaitingRoom
from consumer.errors import ConfigError, StartupError
from consumer.file_limit import ensure_file_limit
from consumer.handler import EventHandler
from consumer.http_api import HttpApi
from consumer.lag import LagMonitor
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.publisher import MAX_RECORD_BYTES, OutcomePublisher
from consumer.reporter import OutcomeReporter
from consumer.settings import Settings
from consumer.topics import ensure_topics
from consumer.tracking_store import TrackingCodeStore

log = structlog.get_logger(__name__)

EXIT_FORCED = 130
CLOSE_TIMEOUT = 10.0
REBALANCE_MARGIN = 15.0
# How often a group member heartbeats, so how soon it learns that a rebalance has begun
# (a member joining or leaving): aiokafka's default is 3 s, for which every member that
# joins waits, and the others keep only their old share meanwhile. One a second is well
# under a third of the session timeout (10 s), as Kafka asks.
HEARTBEAT_INTERVAL = 1.0
# The poll loop runs at least every 100 ms; blocked this long (a rebalance that never ends,
# say), /healthz reports it.
STALL_AFTER = 120.0

_BAD_DATABASE_URL = (
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
)


async def run_service(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    handle_signals: bool = True,
    http_socket: socket.socket | None = None,
) -> None:
    """Run the consumer until ``stop`` is set (SIGTERM and SIGINT set it).

    ``http_socket``, a listening socket, is served instead of ``HTTP_PORT`` (a worker of
    ``run --processes N`` serves the one its supervisor bound).

    A start-up that cannot work (Kafka unreachable, the HTTP port taken) raises
    ``StartupError`` with one readable line; a setting that cannot work (the database missing
    or refusing the credentials, a TOPIC_REPLICATION_FACTOR above the cluster's broker count
    when a topic must be created) raises ``ConfigError``.
    """
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop)
    log.info("service_starting", **settings.safe_summary())
    ensure_file_limit(settings.max_in_flight)
    async with AsyncExitStack() as stack:
        try:
            pipeline, runner = await _start(settings, stack, http_socket)
        except KafkaError as exc:
            raise StartupError(f"cannot start: Kafka: {exc}") from None
        except OSError as exc:
            raise StartupError(f"cannot start: {exc}") from None
        _settle_garbage_collector()
        # The schedule runner drains beside the consume loop once the stop comes.
        runner_stopped = asyncio.create_task(
            _stop_runner(stop, runner, settings.drain_timeout), name="schedule_stop"
        )
        try:
            await pipeline.run(stop)
        finally:
            stop.set()
            await runner_stopped
    log.info("service_stopped")


# Young-generation collections every 10,000 allocations instead of 700: each event
# allocates a few hundred short-lived objects, nearly all freed by reference counting. The
# older generations every 2 younger ones instead of 10: the cycles of requests still in
# flight at a young collection die soon after, and waiting 10 collections for them held
# 36 MiB more with slow receivers (bench, backlog scenario), for no CPU gained.
GC_THRESHOLD_YOUNG = 10_000
GC_THRESHOLD_OLDER = 2


def _settle_garbage_collector() -> None:
    """Move what start-up made (modules, clients, pools) out of the collector's sight and
    collect the young generation less often: the cyclic collector otherwise walks the same
    long-lived objects again and again while events stream through."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_YOUNG, GC_THRESHOLD_OLDER, GC_THRESHOLD_OLDER)


async def _stop_runner(stop: asyncio.Event, runner: ScheduleRunner, drain_timeout: float) -> None:
    await stop.wait()
    drained = await runner.shutdown(drain_timeout)
    log.info("schedule_runner_stopped", drained=drained)


async def _bounded(name: str, close: Callable[[], Awaitable[None]]) -> None:
    """Close one part within ``CLOSE_TIMEOUT``: during a Kafka outage the clients' own stop
    waits for their request timeouts, which would hold the exit for a minute or more."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await close()
    except TimeoutError:
        log.warning("close_timed_out", part=name, after_seconds=CLOSE_TIMEOUT)


def _on_signal(stop: asyncio.Event) -> None:
    """The first SIGTERM or SIGINT stops the service cleanly; a second one ends it at once
    (what was not committed is consumed again after the restart)."""
    if stop.is_set():
        log.warning("service_killed", why="second signal during shutdown")
        os._exit(EXIT_FORCED)
    stop.set()


async def _start(
    settings: Settings, stack: AsyncExitStack, http_socket: socket.socket | None = None
) -> tuple[Pipeline, ScheduleRunner]:
    """Create the topics, open every connection, and return the pipeline ready to run."""
    await check_database(settings.database_url)
    # Refuses (ConfigError) a TOPIC_REPLICATION_FACTOR above the cluster's broker count when
    # a topic must be created; warns about existing topics with fewer replicas.
    await ensure_topics(
        settings.kafka_bootstrap_servers,
        [settings.exam_events_topic, settings.outcomes_topic, settings.dead_letter_topic],
        settings.topic_partitions,
        settings.topic_replication_factor,
        {settings.dead_letter_topic: {"max.message.bytes": str(MAX_RECORD_BYTES)}},
    )
    metrics = Metrics()
    store = TrackingCodeStore(settings.database_url, ttl=settings.tracking_code_ttl)
    await store.start()
    stack.push_async_callback(_bounded, "store", store.close)
    sender = WebhookSender(
        connect_timeout=settings.http_connect_timeout,
        total_timeout=settings.http_total_timeout,
        max_response_bytes=settings.max_response_bytes,
        max_per_host=settings.max_in_flight_per_host,
        allow_private_endpoints=settings.allow_private_endpoints,
        max_connections=settings.max_in_flight,
    )
    await sender.start()
    stack.push_async_callback(_bounded, "sender", sender.close)
    metadata_max_age_ms = int(settings.kafka_metadata_max_age * 1000)
    publisher = OutcomePublisher(
        settings.kafka_bootstrap_servers,
        settings.outcomes_topic,
        settings.dead_letter_topic,
        metadata_max_age_ms=metadata_max_age_ms,
    )
    await publisher.start()
    stack.push_async_callback(_bounded, "publisher", publisher.close)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="itep-webhooks",
        # A revocation may take DRAIN_TIMEOUT to finish the events in hand; the group waits
        # that long (and a margin) before it hands the partitions to someone else.
        rebalance_timeout_ms=int((settings.drain_timeout + REBALANCE_MARGIN) * 1000),
        heartbeat_interval_ms=int(HEARTBEAT_INTERVAL * 1000),
        # Partitions added to the events topic are seen (and the group rebalanced to deal
        # them out) at the next metadata refresh: KAFKA_METADATA_MAX_AGE at the latest.
        metadata_max_age_ms=metadata_max_age_ms,
    )
    schedule = ScheduleStore(
        settings.database_url, owner=instance_name(), topic=settings.exam_events_topic
    )
    await schedule.start()
    stack.push_async_callback(_bounded, "schedule", schedule.close)
    waiting = WaitingTests()
    gate = EndpointGate(
        settings.max_in_flight_per_endpoint,
        BreakerPolicy(
            failure_ratio=settings.breaker_failure_ratio,
            min_attempts=settings.breaker_min_attempts,
            window=settings.breaker_window,
            cooldown=settings.breaker_cooldown,
        ),
        clock=time.monotonic,
    )
    reporter = OutcomeReporter(publisher, metrics)
    room = WaitingRoom(gate, settings.endpoint_queue_wait)
    deliverer = Deliverer(
        sender=sender,
        schedule=schedule,
        gate=gate,
        reporter=reporter,
        metrics=metrics,
        waiting=waiting,
        retry_schedule=settings.retry_schedule,
        room=room,
    )
    runner = ScheduleRunner(
        schedule=schedule,
        store=store,
        deliverer=deliverer,
        gate=gate,
        waiting=waiting,
        metrics=metrics,
        capacity=settings.max_in_flight,
        poll_interval=settings.schedule_poll_interval,
        lease=settings.schedule_lease,
    )
    gate.on_freed = lambda code: _slot_freed(gate, room, runner, code)
    gate.on_transition = lambda code, change: _breaker_changed(metrics, runner, code, change)
    handler = EventHandler(store=store, deliverer=deliverer, reporter=reporter, metrics=metrics)
    lag = LagMonitor(consumer, metrics)
    pipeline = Pipeline(
        settings, consumer, handler, metrics, schedule=schedule, waiting=waiting, lag=lag
    )
    consumer.subscribe([settings.exam_events_topic], listener=pipeline.rebalance_listener())
    await consumer.start()
    stack.push_async_callback(_bounded, "consumer", consumer.stop)
    lag.start()
    stack.push_async_callback(lag.stop)  # before the consumer stops: it reads through it
    if settings.http_port or http_socket is not None:
        api = HttpApi(
            settings.http_port,
            metrics,
            is_ready=lambda: pipeline.ready,
            is_alive=lambda: time.monotonic() - pipeline.last_poll < STALL_AFTER,
            sock=http_socket,
        )
        await api.start()
        stack.push_async_callback(_bounded, "http_api", api.close)
    runner.start()
    return pipeline, runner


def _slot_freed(gate: EndpointGate, room: WaitingRoom, runner: ScheduleRunner, code: str) -> None:
    """Hand the slot to a delivery waiting for it in the process; with none waiting and the
    code's share full until now, let the schedule runner claim for the code again."""
    if room.waiting(code):
        room.slot_freed(code)
    elif gate.in_flight(code) == gate.share - 1:
        runner.wake()


def instance_name() -> str:
    """Names this process in the schedule's leases: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


_BREAKER_GAUGE: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def _breaker_changed(
    metrics: Metrics, runner: ScheduleRunner, code: str, change: Transition
) -> None:
    metrics.breaker_state.labels(code).set(_BREAKER_GAUGE[change.after])
    metrics.breaker_transitions.labels(code, change.after.value).inc()
    event = "breaker_closed" if change.after is BreakerState.CLOSED else f"breaker_{change.after}"
    log.warning(event, tracking_code=code, previous=change.before.value)
    if change.after is BreakerState.OPEN:
        runner.breaker_opened(code)


async def check_database(dsn: str) -> None:
    """Refuse to start on a DATABASE_URL that can never work; carry on through an outage.

    A missing database or refused credentials is a bad setting. An unreachable server is an
    outage like any other: lookups wait for it.
    """
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except _BAD_DATABASE_URL as exc:
        raise ConfigError("DATABASE_URL", f"refused by the server: {exc}") from None
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.warning("tracking_store_unavailable", error=type(exc).__name__, at="start-up")
        return
    await conn.close()
