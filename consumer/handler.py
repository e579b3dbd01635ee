"""What happens to one event: decide, deliver with retries, record the outcome.

``EventHandler`` joins the pure decisions to the I/O rooms (tracking-code lookup, sender,
publisher). It knows nothing of partitions or offsets: the pipeline calls ``handle`` for a
valid event and ``reject`` for an invalid one, and counts the event finished when the call
returns. An outcome is published with retries until the broker acknowledges it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

import structlog
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from consumer.delivery.retry_policy import AttemptResult, Delivered, Fail, decide_retry
from consumer.delivery.webhook import WebhookRequest, build_body, build_request
from consumer.errors import InvalidEvent
from consumer.events import ExamEvent
from consumer.metrics import Metrics
from consumer.outcomes import Outcome, OutcomeRecord, event_outcome, rejected_outcome
from consumer.tracking_codes import TrackingCode
from consumer.triggers import Deliver, Ignore, Skip, candidate_trigger, decide

log = structlog.get_logger(__name__)

PUBLISH_BACKOFF_MAX = 5.0
# A dead-letter ``error`` header names the field and the rule; a value quoted in the rule is
# cut here so that the copy stays about as small as the event it copies.
MAX_ERROR_HEADER = 512
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class TrackingLookup(Protocol):
    async def get(self, code: str) -> TrackingCode | None: ...


class Sender(Protocol):
    async def send(self, request: WebhookRequest) -> AttemptResult: ...


class Publisher(Protocol):
    async def publish(self, record: OutcomeRecord) -> None: ...

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None: ...


class EventHandler:
    def __init__(
        self,
        *,
        store: TrackingLookup,
        sender: Sender,
        publisher: Publisher,
        metrics: Metrics,
        retry_schedule: tuple[float, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sender = sender
        self.publisher = publisher
        self.metrics = metrics
        self.retry_schedule = retry_schedule
        self.clock = clock
        # Tasks waiting for a retry; a stop or a revocation cancels them at once instead of
        # waiting out the delay (their event stays unfinished and is redone).
        self.waiting: set[asyncio.Task[object]] = set()
        # Called when a task starts waiting for a retry (the pipeline wakes its drain).
        self.on_wait: Callable[[], None] = lambda: None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def handle(self, event: ExamEvent) -> None:
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
            await self.publish(
                event_outcome(
                    event,
                    decision.trigger.value,
                    Outcome.SKIPPED,
                    self.now(),
                    reason=decision.reason,
                )
            )
        else:
            self.metrics.events.labels("trigger").inc()
            await self._deliver(event, decision)

    async def _deliver(self, event: ExamEvent, decision: Deliver) -> None:
        code = decision.tracking_code
        body = build_body(event, code)
        trigger = decision.trigger.value
        attempt = 1
        while True:
            request = build_request(event, code, body, int(self.clock()))
            result = await self.sender.send(request)
            self.metrics.latency.observe(result.latency_ms / 1000)
            now = self.now()
            verdict = decide_retry(result, attempt, now, self.retry_schedule)
            host = request.endpoint_host
            if isinstance(verdict, Delivered):
                self.metrics.attempts.labels("delivered").inc()
                log.info("webhook_delivered", status=result.status, attempt=attempt, host=host)
                await self.publish(
                    event_outcome(
                        event,
                        trigger,
                        Outcome.DELIVERED,
                        now,
                        attempt=attempt,
                        result=result,
                        endpoint_host=host,
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
                await self.publish(
                    event_outcome(
                        event,
                        trigger,
                        Outcome.FAILED,
                        now,
                        reason=verdict.reason,
                        attempt=attempt,
                        result=result,
                        endpoint_host=host,
                    )
                )
                return
            self.metrics.attempts.labels("retry").inc()
            log.info(
                "webhook_retry_scheduled",
                reason=verdict.reason,
                status=result.status,
                attempt=attempt,
                host=host,
                next_attempt_at=verdict.at.isoformat(),
            )
            await self.publish(
                event_outcome(
                    event,
                    trigger,
                    Outcome.RETRY_SCHEDULED,
                    now,
                    reason=verdict.reason,
                    next_attempt_at=verdict.at,
                    attempt=attempt,
                    result=result,
                    endpoint_host=host,
                )
            )
            await self._wait((verdict.at - now).total_seconds())
            attempt += 1

    async def _wait(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.waiting.add(task)
        self.on_wait()
        try:
            await asyncio.sleep(max(0.0, seconds))
        finally:
            self.waiting.discard(task)

    async def report_crash(self, event: ExamEvent, exc: Exception) -> None:
        """A bug while handling ``event``: log it with its traceback and report the trigger
        event ``failed`` (reason ``internal_error``), so that one bad event cannot stall its
        partition."""
        log.error("event_handling_crashed", exc_info=exc)
        self.metrics.events.labels("crashed").inc()
        trigger = candidate_trigger(event)
        if trigger is not None:
            await self.publish(
                event_outcome(
                    event, trigger.value, Outcome.FAILED, self.now(), reason="internal_error"
                )
            )

    async def reject(
        self, key: bytes | None, value: bytes | None, exc: InvalidEvent, source: str
    ) -> None:
        """Dead-letter an invalid event (bytes unchanged) and report it ``rejected``."""
        log.warning("event_rejected", field=exc.field, rule=exc.rule, source=source, **exc.known)
        self.metrics.events.labels("invalid").inc()
        error = str(exc)
        if len(error) > MAX_ERROR_HEADER:
            error = error[: MAX_ERROR_HEADER - 3] + "..."
        try:
            await self._until_acknowledged(
                lambda: self.publisher.dead_letter(key, value, error, source)
            )
        except _TOO_LARGE as too_large:
            # The broker takes no copy this size; the event stays readable at its source.
            log.exception("dead_letter_failed", source=source, error=type(too_large).__name__)
        record = rejected_outcome(exc, key, self.now())
        if record is not None:
            await self.publish(record)

    async def publish(self, record: OutcomeRecord) -> None:
        await self._until_acknowledged(lambda: self.publisher.publish(record))
        self.metrics.outcomes.labels(record.outcome.value, record.reason or "").inc()

    async def _until_acknowledged(self, send: Callable[[], Awaitable[None]]) -> None:
        """Retry until the broker acknowledges; a record too large can never succeed and is
        raised."""
        delay = 0.1
        while True:
            try:
                await send()
            except _TOO_LARGE:
                raise
            except KafkaError as exc:
                # Timeouts and unreachable brokers are what an outage looks like: wait it out.
                log.warning("publish_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, PUBLISH_BACKOFF_MAX)
            else:
                return
