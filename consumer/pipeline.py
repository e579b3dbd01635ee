"""The consumer loop: fetch -> dispatch -> deliver -> publish the outcome -> commit.

Work is spread over tasks, one per test id with events waiting, so that a test's webhooks
go out in event order while different tests proceed at once. Each fetched record is
tracked by partition and offset; an offset is committed only once every record below it
has its outcome acknowledged by the broker (or needed none). When too many records are in
flight, the assigned partitions are paused while the poll loop keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from consumer.errors import InvalidEvent
from consumer.events import ExamEvent, parse_event
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.outcomes import Outcome, OutcomeRecord, format_timestamp
from consumer.retry_policy import AttemptResult, Delivered, Fail, decide_retry
from consumer.settings import Settings
from consumer.tracking_codes import TrackingCode
from consumer.triggers import Deliver, Ignore, Skip, Trigger, candidate_trigger, decide
from consumer.webhook import WebhookRequest, build_body, build_request

log = structlog.get_logger(__name__)

PUBLISH_BACKOFF_MAX = 5.0


class TrackingLookup(Protocol):
    async def get(self, code: str) -> TrackingCode | None: ...


class Sender(Protocol):
    async def send(self, request: WebhookRequest) -> AttemptResult: ...


class Publisher(Protocol):
    async def publish(self, record: OutcomeRecord) -> None: ...

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None: ...


class Record(Protocol):
    """The fields of an aiokafka ``ConsumerRecord`` that the pipeline reads."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


Item = tuple[TopicPartition, int, ExamEvent]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        *,
        store: TrackingLookup,
        sender: Sender,
        publisher: Publisher,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.store = store
        self.sender = sender
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.ready = False
        self._queues: dict[str, deque[Item]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()
        self._paused = False
        self._commit_lock = asyncio.Lock()

    # -- the loop ---------------------------------------------------------------------

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, commit and return."""
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        max_records = min(500, self.settings.max_in_flight)
        self.ready = True
        log.info("pipeline_started", topic=self.settings.exam_events_topic)
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=100, max_records=max_records)
                for tp, records in batch.items():
                    for record in records:
                        self._accept(tp, record)
                self._apply_backpressure()
                if loop.time() - last_commit >= self.settings.commit_interval:
                    await self.commit("timer")
                    last_commit = loop.time()
        finally:
            self.ready = False
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop fetching, finish what is in flight within the bound, commit."""
        assigned = list(self.consumer.assignment())
        if assigned:
            self.consumer.pause(*assigned)
        in_flight = self.offsets.in_flight()
        log.info("pipeline_draining", in_flight=in_flight)
        drained = await self.drain(None, self.settings.drain_timeout)
        if not drained:
            await self._cancel_all()
        await self.commit("shutdown")
        log.info("pipeline_stopped", drained=drained, left=self.offsets.in_flight())

    # -- intake -----------------------------------------------------------------------

    def _accept(self, tp: TopicPartition, record: Record) -> None:
        self.offsets.add(tp, record.offset)
        try:
            event = parse_event(record.value, record.key)
        except InvalidEvent as exc:
            self._spawn(self._reject(tp, record, exc))
            return
        queue = self._queues.setdefault(event.test_id, deque())
        queue.append((tp, record.offset, event))
        if event.test_id not in self._runners:
            self._runners[event.test_id] = self._spawn(self._run_key(event.test_id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished task; a crash is a bug: log it loudly. Its event stays
        unfinished, so its offset is never committed and the work is redone on restart."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("event_task_crashed", exc_info=exc)
            self.metrics.events.labels("crashed").inc()

    async def _run_key(self, test_id: str) -> None:
        """Process one test's events in offset order, one at a time."""
        queue = self._queues[test_id]
        try:
            while queue:
                tp, offset, event = queue[0]
                with structlog.contextvars.bound_contextvars(
                    event_id=event.event_id,
                    test_id=test_id,
                    partition=tp.partition,
                    offset=offset,
                ):
                    await self._process(event)
                queue.popleft()
                self._finish(tp, offset)
        finally:
            self._runners.pop(test_id, None)
            if not queue:
                self._queues.pop(test_id, None)

    def _finish(self, tp: TopicPartition, offset: int) -> None:
        self.offsets.finish(tp, offset)
        self._progress.set()

    # -- decisions --------------------------------------------------------------------

    async def _process(self, event: ExamEvent) -> None:
        trigger = candidate_trigger(event)
        if trigger is None:
            self.metrics.events.labels("not_a_trigger").inc()
            return
        code = await self.store.get(event.tracking_code) if event.tracking_code else None
        decision = decide(event, code)
        if isinstance(decision, Ignore):
            self.metrics.events.labels(decision.why).inc()
            log.debug("event_ignored", why=decision.why)
        elif isinstance(decision, Skip):
            self.metrics.events.labels("skipped").inc()
            log.info("webhook_skipped", reason=decision.reason, trigger=decision.trigger.value)
            await self._publish(
                self._record(
                    event, decision.trigger, Outcome.SKIPPED, reason=decision.reason, attempt=0
                )
            )
        else:
            self.metrics.events.labels("trigger").inc()
            await self._deliver(event, decision)

    async def _deliver(self, event: ExamEvent, decision: Deliver) -> None:
        code = decision.tracking_code
        body = build_body(event, code)
        schedule = self.settings.inline_retry_schedule
        attempt = 1
        while True:
            request = build_request(event, code, body, int(self.clock()))
            result = await self.sender.send(request)
            self.metrics.latency.observe(result.latency_ms / 1000)
            now = datetime.fromtimestamp(self.clock(), UTC)
            verdict = decide_retry(result, attempt, now, schedule)
            host = request.endpoint_host
            if isinstance(verdict, Delivered):
                self.metrics.attempts.labels("delivered").inc()
                log.info("webhook_delivered", status=result.status, attempt=attempt, host=host)
                await self._publish(
                    self._record(
                        event,
                        decision.trigger,
                        Outcome.DELIVERED,
                        attempt=attempt,
                        result=result,
                        host=host,
                    )
                )
                return
            if isinstance(verdict, Fail):
                self.metrics.attempts.labels("failed").inc()
                log.warning(
                    "webhook_failed",
                    reason=verdict.reason,
                    status=result.status,
                    attempt=attempt,
                    host=host,
                )
                await self._publish(
                    self._record(
                        event,
                        decision.trigger,
                        Outcome.FAILED,
                        reason=verdict.reason,
                        attempt=attempt,
                        result=result,
                        host=host,
                    )
                )
                return
            self.metrics.attempts.labels("retry").inc()
            next_at = format_timestamp(verdict.at)
            log.info(
                "webhook_retry_scheduled",
                reason=verdict.reason,
                attempt=attempt,
                status=result.status,
                next_attempt_at=next_at,
                host=host,
            )
            await self._publish(
                self._record(
                    event,
                    decision.trigger,
                    Outcome.RETRY_SCHEDULED,
                    reason=verdict.reason,
                    attempt=attempt,
                    result=result,
                    host=host,
                    next_attempt_at=next_at,
                )
            )
            await asyncio.sleep(max(0.0, (verdict.at - now).total_seconds()))
            attempt += 1

    async def _reject(self, tp: TopicPartition, record: Record, exc: InvalidEvent) -> None:
        source = f"{tp.topic}/{tp.partition}/{record.offset}"
        with structlog.contextvars.bound_contextvars(partition=tp.partition, offset=record.offset):
            log.warning("event_rejected", field=exc.field, rule=exc.rule, **exc.known)
            self.metrics.events.labels("invalid").inc()
            await self._with_backoff(
                lambda: self.publisher.dead_letter(record.key, record.value, str(exc), source)
            )
            if "event_id" in exc.known:
                test_id = exc.known.get("test_id") or _decode(record.key)
                await self._publish(
                    OutcomeRecord(
                        event_id=exc.known["event_id"],
                        test_id=test_id,
                        oid=exc.known.get("oid"),
                        tracking_code=exc.known.get("tracking_code"),
                        trigger=None,
                        exam_status=None,
                        outcome=Outcome.REJECTED,
                        reason="invalid_event",
                        attempt=0,
                        http_status=None,
                        latency_ms=None,
                        endpoint_host=None,
                        event_occurred_at=exc.known.get("occurred_at"),
                        recorded_at=format_timestamp(datetime.fromtimestamp(self.clock(), UTC)),
                        next_attempt_at=None,
                    )
                )
        self._finish(tp, record.offset)

    # -- outcomes ---------------------------------------------------------------------

    def _record(
        self,
        event: ExamEvent,
        trigger: Trigger,
        outcome: Outcome,
        *,
        reason: str | None = None,
        attempt: int,
        result: AttemptResult | None = None,
        host: str | None = None,
        next_attempt_at: str | None = None,
    ) -> OutcomeRecord:
        return OutcomeRecord(
            event_id=event.event_id,
            test_id=event.test_id,
            oid=event.oid,
            tracking_code=event.tracking_code,
            trigger=trigger.value,
            exam_status=event.status.value,
            outcome=outcome,
            reason=reason,
            attempt=attempt,
            http_status=result.status if result else None,
            latency_ms=round(result.latency_ms, 1) if result else None,
            endpoint_host=host,
            event_occurred_at=event.occurred_at_text,
            recorded_at=format_timestamp(datetime.fromtimestamp(self.clock(), UTC)),
            next_attempt_at=next_attempt_at,
        )

    async def _publish(self, record: OutcomeRecord) -> None:
        await self._with_backoff(lambda: self.publisher.publish(record))
        self.metrics.outcomes.labels(record.outcome.value, record.reason or "").inc()

    async def _with_backoff(self, send: Callable[[], Any]) -> None:
        """Publish until the broker acknowledges: an outcome is never dropped."""
        delay = 0.1
        while True:
            try:
                await send()
            except KafkaError as exc:
                log.warning("publish_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, PUBLISH_BACKOFF_MAX)
            else:
                return

    # -- flow control and commits -----------------------------------------------------

    def _apply_backpressure(self) -> None:
        in_flight = self.offsets.in_flight()
        self.metrics.in_flight.set(in_flight)
        assigned = list(self.consumer.assignment())
        if not self._paused and in_flight >= self.settings.max_in_flight:
            self._paused = True
            self.consumer.pause(*assigned)
            self.metrics.paused.set(1)
            log.info("fetching_paused", in_flight=in_flight)
        elif self._paused and in_flight <= self.settings.max_in_flight * 0.8:
            self._paused = False
            self.consumer.resume(*assigned)
            self.metrics.paused.set(0)
            log.info("fetching_resumed", in_flight=in_flight)

    async def drain(self, partitions: Iterable[TopicPartition] | None, within: float) -> bool:
        """Wait until nothing is in flight on ``partitions`` (all when None), or time out."""
        chosen = None if partitions is None else list(partitions)
        try:
            async with asyncio.timeout(within):
                while self.offsets.in_flight(chosen):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def commit(self, why: str, partitions: Iterable[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            offsets = self.offsets.to_commit(partitions)
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                log.warning("commit_failed", why=why, error=type(exc).__name__)
                return
            self.offsets.committed(offsets)
            self.metrics.commits.labels(why).inc()
            for tp, offset in offsets.items():
                highwater = self.consumer.highwater(tp)
                if highwater is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(highwater - offset)
            log.debug(
                "offsets_committed",
                why=why,
                offsets={f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()},
            )

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        drained = await self.drain(revoked, self.settings.drain_timeout)
        await self.commit("revoke", revoked)
        self.offsets.revoke(revoked)
        log.info("partitions_revoked", partitions=[str(tp) for tp in revoked], drained=drained)

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.offsets.assign(assigned)
        if self._paused and assigned:
            self.consumer.pause(*assigned)
        log.info("partitions_assigned", partitions=[str(tp) for tp in assigned])


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._pipeline.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._pipeline.on_assigned(list(assigned))


def _decode(key: bytes | None) -> str | None:
    if key is None:
        return None
    with contextlib.suppress(UnicodeDecodeError):
        return key.decode()
    return None
