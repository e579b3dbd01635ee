"""The consumer loop: fetch -> dispatch per test id -> handle -> commit; rebalances; stop.

Work is spread over tasks, one per test id with events waiting ("runners"), so that a test's
webhooks go out in event order while different tests proceed at once. Each fetched record is
tracked by partition and offset; an offset is committed only once every record below it is
finished, that is its outcome (or dead-letter copy) acknowledged by the broker, or no
outcome due. A poll takes at most as many records as the window has room for: unfinished
records up to ``MAX_IN_FLIGHT`` and half as many again (see ``event_window``). When the
window is full, the loop stops polling and waits for records to finish; it
polls again as soon as a tenth of the window is free, from the records aiokafka has already
fetched (pausing the partitions instead would make aiokafka drop those and fetch them
again). Should the window stay full for ``KEEP_ALIVE_POLL`` seconds (an outage), one poll
is made with every partition paused, so that the group never takes the consumer for dead.
A slow record (an attempt waiting out a hanging endpoint) does not count against that bound
for the records finished after it: only its own partition is paused, and only once
``MAX_UNCOMMITTED_PER_PARTITION`` records wait behind it to be committed.

A delivery that cannot be made at once (a failed attempt, a busy, paused or failing
endpoint) is handed to the durable schedule, and its event counts finished: no runner waits
for a retry. When a partition is assigned, the test ids with deliveries waiting in the
schedule are loaded for it, so that a later event of such a test joins the schedule behind
them (see ``consumer.delivery.deliverer.WaitingTests``).

Winding down (a stop, or partitions revoked in a rebalance) lets the runners finish every
event fetched from the partitions concerned, queued ones included, within ``DRAIN_TIMEOUT``,
cancels what is left, and commits. Finishing the queued events too is what makes a clean stop
or a hand-over redo nothing: records finish out of order, so a queued event left unfinished
would hold the commit below every record finished after it, and the next owner would send
those again. Whatever was not finished by the bound is consumed again by the next owner:
nothing is lost, some work may be redone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Collection, Iterable
from typing import Any, Final, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer.delivery.deliverer import Source, WaitingTests
from consumer.errors import InvalidEvent, StoreUnavailable
from consumer.events import ExamEvent, parse_event
from consumer.handler import EventHandler
from consumer.lag import LagMonitor
from consumer.logs import bind_event
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.settings import Settings

log = structlog.get_logger(__name__)

COMMIT_TIMEOUT: Final = 10.0  # a commit that cannot reach the coordinator gives up this soon
POLL_RETRY_DELAY: Final = 1.0
# A full window waits this long for room before one poll with every partition paused: well
# inside aiokafka's max_poll_interval_ms (300 s), after which the group drops the consumer.
KEEP_ALIVE_POLL: Final = 30.0
FULL_WAIT: Final = 0.1  # the loop wakes at least this often while the window is full
# At most this many records a poll. Every record of a poll becomes a runner task stepped in
# the loop's next iteration: 500 at once kept the responses of the attempts in flight
# waiting behind them, and their connections idle. 64 delivered 0.97 of the slow receivers'
# bound against 0.94-0.95, at 0.88-0.96 of the CPU per webhook with fast ones
# (BENCHMARKS.md, thirteenth round).
POLL_BATCH: Final = 64


def event_window(max_in_flight: int) -> int:
    """How many fetched records may be unfinished: ``MAX_IN_FLIGHT`` and half as many again.

    ``MAX_IN_FLIGHT`` bounds the attempts in flight (the sender's connections in use). An
    event also spends time outside its attempt: parsed and looked up before it, its outcome
    waiting for the broker's acknowledgement after it. With a window of exactly
    ``MAX_IN_FLIGHT`` events, 200 ms receivers got 0.76-0.86 of the ``MAX_IN_FLIGHT`` / 0.2 s
    bound (BENCHMARKS.md, tenth round). The margin keeps the attempts' share full; the events
    beyond it wait for a connection in the sender, first come, first served.
    """
    return max_in_flight + max_in_flight // 2


class Record(Protocol):
    """The fields of an aiokafka ``ConsumerRecord`` that the pipeline reads."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


Item = tuple[TopicPartition, int, ExamEvent, bytes]


class WaitingLoader(Protocol):
    async def waiting_tests(self, topic: str, partitions: list[int]) -> dict[int, set[str]]: ...

    async def handed_over(self, topic: str, committed: dict[int, int]) -> dict[int, set[int]]: ...


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        handler: EventHandler,
        metrics: Metrics,
        *,
        schedule: WaitingLoader,
        waiting: WaitingTests,
        lag: LagMonitor | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.handler = handler
        self.metrics = metrics
        self.schedule = schedule
        self.waiting = waiting
        self.lag = lag  # told of every assignment and revocation
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.window = event_window(settings.max_in_flight)
        # Read when scraped: set after each poll instead, it showed the window at its
        # fullest, never the room it had between polls.
        metrics.in_flight.set_function(self.offsets.in_flight)
        self.ready = False
        self.last_poll = time.monotonic()
        self._queues: dict[str, deque[Item]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._rejects: dict[asyncio.Task[None], TopicPartition] = {}
        self._progress = asyncio.Event()
        self._held_back: dict[TopicPartition, list[Record]] = {}
        self._paused = False  # the in-flight window is full: no polling until it has room
        self._full_since = self._last_keep_alive = 0.0
        self._window_full: set[TopicPartition] = set()  # paused: too many records uncommitted
        self._commit_lock = asyncio.Lock()
        self._timer_commit: asyncio.Task[None] | None = None

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self)

    # -- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then wind down, commit and return."""
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        max_records = min(POLL_BATCH, self.window)
        stopped = asyncio.ensure_future(stop.wait())
        self.ready = True
        log.info("pipeline_started", topic=self.settings.exam_events_topic)
        try:
            while not stop.is_set():
                room = self._room()
                if room:
                    batch = await self._poll(stopped, min(max_records, room))
                else:
                    batch = await self._wait_for_room(stopped)
                self.last_poll = time.monotonic()  # the loop's heartbeat, for /health
                for tp, records in batch.items():
                    for record in records:
                        self._accept(tp, record)
                self._apply_backpressure()
                if loop.time() - last_commit >= self.settings.commit_interval:
                    self._commit_beside()
                    last_commit = loop.time()
        finally:
            self.ready = False
            stopped.cancel()
            await self.shutdown()

    async def _poll(
        self, stopped: asyncio.Future[Any], max_records: int
    ) -> dict[TopicPartition, list[Any]]:
        """One ``getmany``, given up when the stop comes first (say, mid-rebalance).

        Records of a poll given up are not tracked, so no commit can pass them: they are
        consumed again later.
        """
        fetch = asyncio.ensure_future(
            self.consumer.getmany(timeout_ms=100, max_records=max_records)
        )
        await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await fetch
            return {}
        try:
            batch: dict[TopicPartition, list[Any]] = fetch.result()
        except KafkaError as exc:
            if not exc.retriable:
                raise
            log.warning(
                "poll_failed",
                error=type(exc).__name__,
                retry_in=POLL_RETRY_DELAY,
                waiting_for="Kafka",
            )
            await asyncio.sleep(POLL_RETRY_DELAY)
            return {}
        return batch

    def _commit_beside(self) -> None:
        """The timer's commit, in a task of its own: the loop goes on polling and handing
        out events during the broker's round trip, which would otherwise delay every event
        fetched meanwhile. One at a time; a later commit waits for it (the commit lock)."""
        if self._timer_commit is None or self._timer_commit.done():
            self._timer_commit = asyncio.create_task(self.commit("timer"), name="commit_timer")
            self._timer_commit.add_done_callback(_log_commit_crash)

    async def shutdown(self) -> None:
        """Stop fetching, finish the events in hand within the bound, commit."""
        assigned = list(self.consumer.assignment())
        if assigned:
            self.consumer.pause(*assigned)
        log.info("pipeline_draining", in_flight=self.offsets.in_flight())
        drained = await self.wind_down(None)
        await self.commit("shutdown")
        log.info("pipeline_stopped", drained=drained, left=self.offsets.in_flight())

    # -- intake -----------------------------------------------------------------------

    def _accept(self, tp: TopicPartition, record: Record) -> None:
        self.offsets.add(tp, record.offset)
        if not self.waiting.loaded(tp.topic, tp.partition):
            # Fetched before the partition's waiting tests are loaded: handled once they are,
            # so that no event can overtake an earlier delivery waiting in the schedule.
            self._held_back.setdefault(tp, []).append(record)
            return
        self._dispatch(tp, record)

    def _dispatch(self, tp: TopicPartition, record: Record) -> None:
        if self.waiting.take_handed(tp.topic, tp.partition, record.offset):
            # Consumed again after a crash or a hand-over: the schedule has its delivery.
            log.debug("event_already_scheduled", partition=tp.partition, offset=record.offset)
            self.metrics.event("already_scheduled").inc()
            self._finish(tp, record.offset)
            return
        try:
            event = parse_event(record.value, record.key)
        except InvalidEvent as exc:
            task = asyncio.create_task(self._reject(tp, record, exc))
            self._rejects[task] = tp
            task.add_done_callback(self._reject_done)
            return
        queue = self._queues.setdefault(event.test_id, deque())
        queue.append((tp, record.offset, event, record.value or b""))
        self._ensure_runner(event.test_id)

    def _ensure_runner(self, test_id: str) -> None:
        if test_id not in self._runners:
            # No done callbacks: the runner forgets itself when it ends, and ``_cancel``
            # forgets those cancelled before their first step (two callbacks and a closure
            # per event were 2% of a profile).
            self._runners[test_id] = asyncio.create_task(self._run_key(test_id))

    async def _run_key(self, test_id: str) -> None:
        """Handle one test's events in offset order, one at a time."""
        queue = self._queues[test_id]
        # A task runs in its own copy of the context: what is bound here stays in this
        # runner's log lines and needs no unbinding.
        try:
            while queue:
                tp, offset, event, raw = queue[0]
                bind_event(test_id, event.event_id, tp.partition, offset)
                try:
                    source = Source(tp.topic, tp.partition, offset)
                    await self.handler.handle(event, source, raw)
                except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition: it is logged with its traceback and reported failed
                    await self._report_crash(event, exc)
                queue.popleft()
                self._finish(tp, offset)
        except Exception:
            log.exception("runner_crashed")
        finally:
            if self._runners.get(test_id) is asyncio.current_task():
                del self._runners[test_id]
            if not queue and self._queues.get(test_id) is queue:
                del self._queues[test_id]
            self._progress.set()

    async def _report_crash(self, event: ExamEvent, exc: Exception) -> None:
        try:
            await self.handler.report_crash(event, exc)
        except Exception:
            log.exception("crash_report_failed")

    async def _reject(self, tp: TopicPartition, record: Record, exc: InvalidEvent) -> None:
        source = f"{tp.topic}/{tp.partition}/{record.offset}"
        with structlog.contextvars.bound_contextvars(partition=tp.partition, offset=record.offset):
            try:
                await self.handler.reject(record.key, record.value, exc, source)
            except Exception:
                log.exception("event_rejection_crashed")
        self._finish(tp, record.offset)

    def _reject_done(self, task: asyncio.Task[None]) -> None:
        self._rejects.pop(task, None)
        self._progress.set()

    def _finish(self, tp: TopicPartition, offset: int) -> None:
        self.offsets.finish(tp, offset)
        self._progress.set()

    # -- flow control -----------------------------------------------------------------

    def _room(self) -> int:
        """How many records the next poll may take: none while the window is full, until a
        tenth of it is free again."""
        limit = self.window
        in_flight = self.offsets.in_flight()
        if not self._paused and in_flight >= limit:
            self._window_filled(in_flight)
        if self._paused:
            if in_flight > limit - max(1, limit // 10):
                return 0
            self._paused = False
            self.metrics.paused.set(0)
            log.info(
                "fetching_resumed",
                in_flight=in_flight,
                paused_for=round(time.monotonic() - self._full_since, 3),
            )
        return max(0, limit - in_flight)

    def _apply_backpressure(self) -> None:
        in_flight = self.offsets.in_flight()
        if not self._paused and in_flight >= self.window:
            self._window_filled(in_flight)
        self._hold_partitions(list(self.consumer.assignment()))

    def _window_filled(self, in_flight: int) -> None:
        self._paused = True
        self._full_since = self._last_keep_alive = time.monotonic()
        self.metrics.paused.set(1)
        log.info("fetching_paused", in_flight=in_flight)

    async def _wait_for_room(self, stopped: asyncio.Future[Any]) -> dict[TopicPartition, list[Any]]:
        """Wait, at most ``FULL_WAIT``, for a record to finish. After ``KEEP_ALIVE_POLL``
        seconds of a full window, poll once with every partition paused (nothing is returned
        for a paused partition, though a partition assigned meanwhile may give records,
        which are returned to be handled)."""
        if time.monotonic() - self._last_keep_alive >= KEEP_ALIVE_POLL:
            assigned = list(self.consumer.assignment())
            self.consumer.pause(*assigned)
            try:
                batch = await self._poll(stopped, 1)
            finally:
                self.consumer.resume(*[tp for tp in assigned if tp not in self._window_full])
            self._last_keep_alive = time.monotonic()
            return batch
        self._progress.clear()
        progress = asyncio.ensure_future(self._progress.wait())
        await asyncio.wait(
            {progress, stopped}, timeout=FULL_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        progress.cancel()
        return {}

    def _hold_partitions(self, assigned: list[TopicPartition]) -> None:
        """Pause a partition whose uncommitted records reach the bound; resume it at 80%."""
        limit = self.settings.max_uncommitted_per_partition
        for tp in assigned:
            uncommitted = self.offsets.uncommitted(tp)
            if tp not in self._window_full and uncommitted >= limit:
                self._window_full.add(tp)
                self.consumer.pause(tp)
                log.warning("partition_held", partition=tp.partition, uncommitted=uncommitted)
            elif tp in self._window_full and uncommitted <= limit * 0.8:
                self._window_full.discard(tp)
                self.consumer.resume(tp)
                log.info("partition_released", partition=tp.partition, uncommitted=uncommitted)
        self.metrics.held.set(len(self._window_full))

    # -- winding down -----------------------------------------------------------------

    async def wind_down(self, partitions: Collection[TopicPartition] | None) -> bool:
        """Finish the work of ``partitions`` (all when None): every event fetched from them,
        queued or in hand, within ``DRAIN_TIMEOUT``; what is left then is cancelled. True
        when all of it finished in time."""

        def concerned(tp: TopicPartition) -> bool:
            return partitions is None or tp in partitions

        self._restart_runners()
        drained = await self._wait_idle(concerned)
        # What is left overran the bound.
        await self._cancel(concerned)
        return drained

    def _busy(self, concerned: Any) -> list[asyncio.Task[None]]:  # noqa: ANN401 - a predicate
        """Tasks working on an event of a concerned partition."""
        busy = [task for task, tp in self._rejects.items() if concerned(tp)]
        for test_id, queue in self._queues.items():
            runner = self._runners.get(test_id)
            if runner is not None and any(concerned(item[0]) for item in queue):
                busy.append(runner)
        return busy

    async def _wait_idle(self, concerned: Any) -> bool:  # noqa: ANN401 - a predicate
        """Wait, within ``DRAIN_TIMEOUT``, until no task works on a concerned partition."""
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                while self._busy(concerned):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def _cancel(self, concerned: Any) -> None:  # noqa: ANN401 - a predicate
        busy = self._busy(concerned)
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        # A runner cancelled before its first step never ran its ``finally``.
        for test_id, runner in list(self._runners.items()):
            if runner.done():
                del self._runners[test_id]
        for queue in self._queues.values():
            kept = [item for item in queue if not concerned(item[0])]
            queue.clear()
            queue.extend(kept)
        self._restart_runners()

    def _restart_runners(self) -> None:
        """Forget emptied queues; give every queue left without its runner a new one."""
        for test_id in [t for t, q in self._queues.items() if not q and t not in self._runners]:
            del self._queues[test_id]
        for test_id in list(self._queues):
            self._ensure_runner(test_id)

    # -- commits and rebalances -------------------------------------------------------

    async def commit(self, why: str, partitions: Iterable[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            offsets = self.offsets.to_commit(partitions)
            if not offsets:
                return
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT):
                    await self.consumer.commit(offsets)
            except (KafkaError, TimeoutError) as exc:
                log.warning("commit_failed", why=why, error=type(exc).__name__, waiting_for="Kafka")
                return
            self.offsets.committed(offsets)
            self.metrics.commits.labels(why).inc()
            log.debug(
                "offsets_committed",
                why=why,
                offsets={f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()},
            )

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        drained = await self.wind_down(set(revoked))
        await self.commit("revoke", revoked)
        self.offsets.revoke(revoked)
        for tp in revoked:
            self.waiting.drop(tp.topic, tp.partition)
            self._held_back.pop(tp, None)
            self._window_full.discard(tp)
        if self.lag is not None:
            self.lag.revoked(revoked)
        log.info("partitions_revoked", partitions=[str(tp) for tp in revoked], drained=drained)

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.lag is not None:
            await self.lag.assigned(assigned)
        self.offsets.assign(assigned)
        await self._load_waiting(assigned)
        log.info("partitions_assigned", partitions=[str(tp) for tp in assigned])

    async def _load_waiting(self, assigned: list[TopicPartition]) -> None:
        """Before any event of these partitions is handled, load from the schedule the tests
        with waiting deliveries and the uncommitted offsets it already holds (the schedule
        waits through a Postgres outage)."""
        by_topic: dict[str, dict[int, int]] = {}
        for tp in assigned:
            try:
                committed = await self.consumer.committed(tp)
            except KafkaError as exc:
                log.warning("committed_offset_unknown", partition=tp.partition, error=str(exc))
                committed = None
            by_topic.setdefault(tp.topic, {})[tp.partition] = committed or 0
        for topic, committed_offsets in by_topic.items():
            try:
                found = await self.schedule.waiting_tests(topic, list(committed_offsets))
                handed = await self.schedule.handed_over(topic, committed_offsets)
            except StoreUnavailable:
                return  # closing: nothing will be handled
            for partition, test_ids in found.items():
                self.waiting.load(topic, partition, test_ids)
            for partition, offsets in handed.items():
                self.waiting.load_handed(topic, partition, offsets)
            for partition in committed_offsets:
                tp = TopicPartition(topic, partition)
                for record in self._held_back.pop(tp, []):
                    self._dispatch(tp, record)
            log.info(
                "waiting_deliveries_loaded",
                topic=topic,
                tests=sum(len(t) for t in found.values()),
                uncommitted_in_schedule=sum(len(o) for o in handed.values()),
            )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._pipeline.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._pipeline.on_assigned(list(assigned))


def _log_commit_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("commit_crashed", exc_info=exc)
