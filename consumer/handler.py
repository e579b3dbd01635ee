"""What happens to one consumed event: decide, then deliver, skip or reject it.

``EventHandler`` joins the pure decisions to the I/O rooms. It knows nothing of offsets: the
pipeline calls ``handle`` for a valid event and ``reject`` for an invalid one, and counts the
event finished when the call returns, that is when its outcome is acknowledged by the broker
and, for a delivery that must wait, when the schedule holds it. Nothing here waits for a
retry: a delivery that must wait is handed to the durable schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import structlog

from consumer.delivery.deliverer import EARLIER_PENDING, Deliverer, Delivery, Source
from consumer.errors import InvalidEvent
from consumer.events import ExamEvent
from consumer.metrics import Metrics
from consumer.outcomes import Outcome, event_outcome, rejected_outcome
from consumer.reporter import TOO_LARGE, OutcomeReporter
from consumer.tracking_codes import TrackingCode
from consumer.triggers import Ignore, Skip, candidate_trigger, decide

log = structlog.get_logger(__name__)

# A dead-letter ``error`` header names the field and the rule; a value quoted in the rule is
# cut here so that the copy stays about as small as the event it copies.
MAX_ERROR_HEADER = 512


class TrackingLookup(Protocol):
    async def get(self, code: str) -> TrackingCode | None: ...


class EventHandler:
    def __init__(
        self,
        *,
        store: TrackingLookup,
        deliverer: Deliverer,
        reporter: OutcomeReporter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.reporter = reporter
        self.metrics = metrics
        self.clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def handle(self, event: ExamEvent, source: Source, raw: bytes) -> None:
        trigger = candidate_trigger(event)
        if trigger is None:
            self.metrics.event("not_a_trigger").inc()
            return
        code = await self.store.get(event.tracking_code) if event.tracking_code else None
        decision = decide(event, code)
        if isinstance(decision, Ignore):
            self.metrics.event(decision.why).inc()
            log.debug("event_ignored", why=decision.why)
        elif isinstance(decision, Skip):
            self.metrics.event("skipped").inc()
            log.info("webhook_skipped", reason=decision.reason, trigger=decision.trigger.value)
            await self.reporter.publish(
                event_outcome(
                    event,
                    decision.trigger.value,
                    Outcome.SKIPPED,
                    self.now(),
                    reason=decision.reason,
                )
            )
        else:
            self.metrics.event("trigger").inc()
            delivery = Delivery(event, raw, decision.trigger.value, source)
            if self.deliverer.waiting.has(source, event.test_id):
                # An earlier delivery of this test waits in the schedule: this one goes
                # out right after it, never before.
                await self.deliverer.hold(delivery, decision.tracking_code, EARLIER_PENDING)
            else:
                await self.deliverer.deliver(delivery, decision.tracking_code)

    async def report_crash(self, event: ExamEvent, exc: Exception) -> None:
        """A bug while handling ``event``: log it with its traceback and report the trigger
        event ``failed`` (reason ``internal_error``), so that one bad event cannot stall its
        partition."""
        log.error("event_handling_crashed", exc_info=exc)
        self.metrics.event("crashed").inc()
        trigger = candidate_trigger(event)
        if trigger is not None:
            await self.reporter.publish(
                event_outcome(
                    event, trigger.value, Outcome.FAILED, self.now(), reason="internal_error"
                )
            )

    async def reject(
        self, key: bytes | None, value: bytes | None, exc: InvalidEvent, source: str
    ) -> None:
        """Dead-letter an invalid event (bytes unchanged) and report it ``rejected``."""
        log.warning("event_rejected", field=exc.field, rule=exc.rule, source=source, **exc.known)
        self.metrics.event("invalid").inc()
        error = str(exc)
        if len(error) > MAX_ERROR_HEADER:
            error = error[: MAX_ERROR_HEADER - 3] + "..."
        try:
            await self.reporter.dead_letter(key, value, error, source)
        except TOO_LARGE as too_large:
            # The broker takes no copy this size; the event stays readable at its source.
            log.exception("dead_letter_failed", source=source, error=type(too_large).__name__)
        record = rejected_outcome(exc, key, self.now())
        if record is not None:
            await self.reporter.publish(record)
