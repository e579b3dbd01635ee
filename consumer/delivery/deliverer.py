"""One attempt at one delivery, and where the delivery goes next.

``Deliverer.deliver`` is shared by the consume loop (a delivery straight from its event) and
the schedule runner (a delivery claimed from the schedule). It asks the ``EndpointGate``
whether the attempt may be made; then:

- delivered: the outcome is published, and a scheduled row is deleted;
- failed for good (a permanent failure, or the schedule's last step failed): ``failed`` is
  published and the delivery is kept in the schedule as ``dead``, ready to be replayed;
- failed, may be retried: the delivery is put on the schedule for its next step, and then
  ``retry_scheduled`` is published with ``next_attempt_at``;
- held by the gate (paused, busy, breaker open) or behind an earlier delivery of its test:
  it waits in the schedule (``retry_scheduled`` with the reason). Only an open breaker uses
  up a step of the schedule; the other holds are flow control.

The schedule is written before ``retry_scheduled`` is published, so that an outcome that
announces a retry always has the row behind it; a final outcome is published before the row
is deleted or marked dead, so that a crash in between repeats the delivery rather than
losing its outcome.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from consumer.delivery.endpoints import BUSY, CIRCUIT_OPEN, Admit, EndpointGate, Hold
from consumer.delivery.retry_policy import (
    AttemptResult,
    Delivered,
    Fail,
    decide_retry,
    held_delay,
    is_retriable,
)
from consumer.delivery.schedule import DEAD, PENDING, NewDelivery, Progress
from consumer.delivery.waiting_room import WaitingRoom
from consumer.delivery.webhook import WebhookRequest, build_body, build_request, endpoint_of
from consumer.events import ExamEvent
from consumer.metrics import Metrics
from consumer.outcomes import Outcome, OutcomeRecord, event_outcome
from consumer.records import record
from consumer.tracking_codes import TrackingCode

log = structlog.get_logger(__name__)

EARLIER_PENDING = "earlier_delivery_pending"


@record
class Source:
    """Where the delivery's event was consumed from."""

    topic: str
    partition: int
    offset: int


@record
class Delivery:
    """A trigger event on its way to its endpoint. ``row_id`` is None until it is on the
    schedule; ``attempts`` counts the POSTs made, ``step`` the schedule's steps used."""

    event: ExamEvent
    raw: bytes
    trigger: str
    source: Source
    row_id: int | None = None
    attempts: int = 0
    step: int = 0


class Sender(Protocol):
    async def send(self, request: WebhookRequest) -> AttemptResult: ...


class Schedule(Protocol):
    async def add(self, delivery: NewDelivery) -> None: ...

    async def reschedule(self, row_id: int, progress: Progress, due_at: datetime) -> None: ...

    async def kill(self, row_id: int, progress: Progress) -> bool: ...

    async def remove(self, row_id: int) -> bool: ...

    async def release(self, row_ids: list[int]) -> None: ...


class Reporter(Protocol):
    async def publish(self, record: OutcomeRecord) -> None: ...


class WaitingTests:
    """Per assigned partition, the test ids that have deliveries waiting in the schedule.

    The consume loop checks it for every trigger event (no Postgres round trip): a later
    event of such a test joins the schedule behind the earlier one. It may hold a test id
    that has nothing left waiting (another instance settled it); that costs the event a trip
    through the schedule, never its order. A test id is only forgotten by a caller that
    checked the schedule after the id was last added (``mark`` before the check, ``since``
    after it), so a row written while the check ran is never overlooked.
    """

    def __init__(self) -> None:
        self._by_partition: dict[tuple[str, int], set[str]] = {}
        self._tick = 0
        self._added_at: dict[str, int] = {}
        # Offsets not yet committed whose events the schedule already holds (written before
        # a crash or a hand-over): consumed again, they are finished without a second go.
        self._handed: dict[tuple[str, int], set[int]] = {}

    def load_handed(self, topic: str, partition: int, offsets: set[int]) -> None:
        if offsets:
            self._handed[(topic, partition)] = set(offsets)
        else:
            self._handed.pop((topic, partition), None)

    def take_handed(self, topic: str, partition: int, offset: int) -> bool:
        """True (once) when the event at ``offset`` is already in the schedule."""
        offsets = self._handed.get((topic, partition))
        if offsets is None or offset not in offsets:
            return False
        offsets.discard(offset)
        if not offsets:
            del self._handed[(topic, partition)]
        return True

    def has(self, source: Source, test_id: str) -> bool:
        tests = self._by_partition.get((source.topic, source.partition))
        return tests is not None and test_id in tests

    def add(self, source: Source, test_id: str) -> None:
        tests = self._by_partition.get((source.topic, source.partition))
        if tests is not None:
            tests.add(test_id)
            self._tick += 1
            self._added_at[test_id] = self._tick

    def mark(self) -> int:
        return self._tick

    def discard(self, topic: str, partition: int, test_id: str, *, since: int) -> None:
        """Forget ``test_id``, checked to have nothing waiting after ``mark()`` gave
        ``since``, unless it was added again since."""
        if self._added_at.get(test_id, 0) > since:
            return
        tests = self._by_partition.get((topic, partition))
        if tests is not None:
            tests.discard(test_id)
        self._added_at.pop(test_id, None)

    def load(self, topic: str, partition: int, test_ids: set[str]) -> None:
        self._by_partition[(topic, partition)] = set(test_ids)

    def drop(self, topic: str, partition: int) -> None:
        for test_id in self._by_partition.pop((topic, partition), set()):
            self._added_at.pop(test_id, None)
        self._handed.pop((topic, partition), None)

    def loaded(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._by_partition

    def snapshot(self) -> tuple[set[str], int]:
        """Every test id held, and the ``mark`` to pass to ``prune`` after checking them."""
        ids = set().union(*self._by_partition.values()) if self._by_partition else set()
        return ids, self._tick

    def prune(self, still_waiting: set[str], checked: set[str], since: int) -> None:
        """Forget the ``checked`` test ids that are not ``still_waiting``, except those
        added after ``since`` (their new row may have been written after the check)."""
        for test_id in checked - still_waiting:
            if self._added_at.get(test_id, 0) > since:
                continue
            for tests in self._by_partition.values():
                tests.discard(test_id)
            self._added_at.pop(test_id, None)

    def __len__(self) -> int:
        return sum(len(tests) for tests in self._by_partition.values())


class Deliverer:
    def __init__(
        self,
        *,
        sender: Sender,
        schedule: Schedule,
        gate: EndpointGate,
        reporter: Reporter,
        metrics: Metrics,
        waiting: WaitingTests,
        retry_schedule: tuple[float, ...],
        room: WaitingRoom | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sender = sender
        self.schedule = schedule
        self.gate = gate
        self.room = room
        self.reporter = reporter
        self.metrics = metrics
        self.waiting = waiting
        self.retry_schedule = retry_schedule
        self.clock = clock
        self.rng = rng

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def excluded_codes(self) -> list[str]:
        """Codes whose due deliveries the schedule runner should not claim right now."""
        waiting = self.room.codes() if self.room is not None else []
        return sorted(set(self.gate.excluded()) | set(waiting))

    async def deliver(self, delivery: Delivery, code: TrackingCode) -> None:
        """Attempt ``delivery`` if the gate allows, and settle or schedule what follows."""
        last_step = delivery.step >= len(self.retry_schedule)
        if self.room is not None and delivery.row_id is None:
            # Straight from its event: it may wait briefly here for a slot of its code.
            admission = await self.room.admit(code, last_step=last_step)
        elif self.room is not None and self.room.waiting(code.code):
            admission = Hold(BUSY)  # deliveries wait here for this code: no overtaking them
        else:
            admission = self.gate.admit(code, last_step=last_step)
        if isinstance(admission, Hold):
            if delivery.row_id is not None and (
                admission.reason != CIRCUIT_OPEN or self.gate.probing(code.code)
            ):
                # Claimed while the code was free; it stays as it is, due, and is claimed
                # again when a slot frees, the probe settles or the code is resumed (the
                # runner leaves such codes alone meanwhile).
                await self.schedule.release([delivery.row_id])
                return
            if admission.reason == CIRCUIT_OPEN:
                self.metrics.breaker_skipped.labels(code.code).inc()
            elif delivery.row_id is not None:
                # Claimed while the code was free; it stays as it is, due, and is claimed
                # again when a slot frees or the code is resumed.
                await self.schedule.release([delivery.row_id])
                return
            await self.hold(delivery, code, admission.reason)
            return
        await self._attempt(delivery, code, admission)

    async def hold(self, delivery: Delivery, code: TrackingCode, reason: str) -> None:
        """Put ``delivery`` on the schedule without an attempt. An open breaker uses up the
        step: the delivery is due after the step's delay, or when the breaker lets a probe
        through if that is later (never past the schedule's longest step), since claiming it
        before then would only hold it again. Other holds are due now."""
        now = self.now()
        step = delivery.step
        due = now
        if reason == CIRCUIT_OPEN:
            due = now + timedelta(seconds=self.held_delay(step, self.gate.open_for(code.code)))
            step += 1
        # At debug, like a delivery: a partner down for an hour would otherwise log a line
        # per event. The condition itself is logged once (breaker_open, a pause), and the
        # outcome topic and itep_webhook_outcomes_total{reason} count every hold.
        log.debug("webhook_held", reason=reason, next_attempt_at=due.isoformat())
        host = endpoint_of(code).host
        progress = Progress(delivery.attempts, step, reason, endpoint_host=host)
        await self._to_schedule(delivery, code, progress, due)
        await self._publish(
            delivery,
            Outcome.RETRY_SCHEDULED,
            now,
            reason=reason,
            attempt=delivery.attempts,
            endpoint_host=host,
            next_attempt_at=due,
        )

    def held_delay(self, step: int, reopens_in: float) -> float:
        """Seconds an open breaker that lets a probe through in ``reopens_in`` seconds
        holds a delivery on ``step`` of the schedule (not its last)."""
        longest = max(self.retry_schedule)
        return held_delay(self.retry_schedule[step], reopens_in, longest, self.rng)

    async def announce_held(self, delivery: Delivery, code: TrackingCode, due: datetime) -> None:
        """Publish ``retry_scheduled`` for a delivery the schedule has just held for
        ``code``'s open breaker (``ScheduleStore.hold_due``), as ``hold`` does for one."""
        self.metrics.breaker_skipped.labels(code.code).inc()
        await self._publish(
            delivery,
            Outcome.RETRY_SCHEDULED,
            self.now(),
            reason=CIRCUIT_OPEN,
            attempt=delivery.attempts,
            endpoint_host=endpoint_of(code).host,
            next_attempt_at=due,
        )

    async def _attempt(self, delivery: Delivery, code: TrackingCode, admitted: Admit) -> None:
        event = delivery.event
        body = build_body(event, code)
        request = build_request(event, code, body, int(self.clock()))
        try:
            result = await self.sender.send(request)
        except BaseException:
            self.gate.done(admitted, ok=None)
            raise
        self.gate.done(admitted, ok=not is_retriable(result))
        self.metrics.latency.observe(result.latency_ms / 1000)
        now = self.now()
        attempt = delivery.attempts + 1
        host = request.endpoint_host
        verdict = decide_retry(result, delivery.step + 1, now, self.retry_schedule, self.rng)
        if isinstance(verdict, Delivered):
            self.metrics.attempt("delivered").inc()
            self.metrics.endpoint_attempt(code.code, "delivered").inc()
            # At debug: one line per webhook at info is most of a log's volume and a few
            # per cent of the CPU; the outcome topic records every delivery.
            log.debug("webhook_delivered", status=result.status, attempt=attempt, host=host)
            await self._publish(
                delivery,
                Outcome.DELIVERED,
                now,
                attempt=attempt,
                result=result,
                endpoint_host=host,
            )
            if delivery.row_id is not None:
                since = self.waiting.mark()
                self._settled(delivery, await self.schedule.remove(delivery.row_id), since)
            return
        if isinstance(verdict, Fail):
            self.metrics.attempt("failed").inc()
            self.metrics.endpoint_attempt(code.code, "failed").inc()
            log.warning(
                "webhook_failed",
                reason=verdict.reason,
                status=result.status,
                attempt=attempt,
                host=host,
            )
            await self._publish(
                delivery,
                Outcome.FAILED,
                now,
                reason=verdict.reason,
                attempt=attempt,
                result=result,
                endpoint_host=host,
            )
            failed = Progress(attempt, delivery.step, verdict.reason, result.status, host, now)
            await self._kill(delivery, code, failed)
            return
        self.metrics.attempt("retry").inc()
        self.metrics.endpoint_attempt(code.code, "retry").inc()
        log.info(
            "webhook_retry_scheduled",
            reason=verdict.reason,
            status=result.status,
            attempt=attempt,
            host=host,
            next_attempt_at=verdict.at.isoformat(),
        )
        progress = Progress(attempt, delivery.step + 1, verdict.reason, result.status, host, now)
        await self._to_schedule(delivery, code, progress, verdict.at)
        await self._publish(
            delivery,
            Outcome.RETRY_SCHEDULED,
            now,
            reason=verdict.reason,
            attempt=attempt,
            result=result,
            endpoint_host=host,
            next_attempt_at=verdict.at,
        )

    async def settle(self, delivery: Delivery, outcome: Outcome, reason: str) -> None:
        """End a scheduled delivery without an attempt (its tracking code was disabled or
        removed meanwhile): publish the final outcome, delete the row."""
        await self._publish(delivery, outcome, self.now(), reason=reason, attempt=delivery.attempts)
        if delivery.row_id is not None:
            since = self.waiting.mark()
            self._settled(delivery, await self.schedule.remove(delivery.row_id), since)

    # -- the schedule -------------------------------------------------------------------

    async def _to_schedule(
        self, delivery: Delivery, code: TrackingCode, progress: Progress, due: datetime
    ) -> None:
        if delivery.row_id is not None:
            await self.schedule.reschedule(delivery.row_id, progress, due)
            return
        await self.schedule.add(self._new_row(delivery, code, PENDING, progress, due))
        self.waiting.add(delivery.source, delivery.event.test_id)

    async def _kill(self, delivery: Delivery, code: TrackingCode, progress: Progress) -> None:
        if delivery.row_id is not None:
            since = self.waiting.mark()
            others = await self.schedule.kill(delivery.row_id, progress)
            self._settled(delivery, others, since)
            return
        due = progress.last_attempt_at or self.now()
        await self.schedule.add(self._new_row(delivery, code, DEAD, progress, due))

    @staticmethod
    def _new_row(
        delivery: Delivery, code: TrackingCode, state: str, progress: Progress, due: datetime
    ) -> NewDelivery:
        event, source = delivery.event, delivery.source
        return NewDelivery(
            event_id=event.event_id,
            test_id=event.test_id,
            tracking_code=code.code,
            trigger=delivery.trigger,
            event=delivery.raw,
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
            state=state,
            progress=progress,
            due_at=due,
            behind=progress.reason == EARLIER_PENDING,
        )

    def _settled(self, delivery: Delivery, others_waiting: bool, since: int) -> None:
        if not others_waiting:
            source = delivery.source
            self.waiting.discard(
                source.topic, source.partition, delivery.event.test_id, since=since
            )

    async def _publish(
        self,
        delivery: Delivery,
        outcome: Outcome,
        now: datetime,
        *,
        reason: str | None = None,
        attempt: int = 0,
        result: AttemptResult | None = None,
        endpoint_host: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        await self.reporter.publish(
            event_outcome(
                delivery.event,
                delivery.trigger,
                outcome,
                now,
                reason=reason,
                attempt=attempt,
                result=result,
                endpoint_host=endpoint_host,
                next_attempt_at=next_attempt_at,
            )
        )
