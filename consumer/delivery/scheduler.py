"""The schedule runner: claims due deliveries from the schedule and attempts them.

Every instance runs one. ``_claim_routine`` claims the head of each test's waiting
deliveries when it is due (``FOR UPDATE SKIP LOCKED`` and a lease, so that with several
instances each due delivery is attempted by one of them), passing over tracking codes whose
share of attempts is full or whose breaker has a probe out, and runs each claimed delivery
as its own task, at most ``capacity`` at a time. It claims again when woken (a delivery was
put on the schedule or settled, a slot freed) and at least every ``poll_interval``, so a
delivery is attempted no earlier than its due time and about ``poll_interval`` after it at
the latest.

When a code's breaker opens, ``breaker_opened`` holds the code's due deliveries in the
schedule in one transaction per ``HOLD_BATCH``, each as a claim followed by the gate's
``circuit_open`` answer would (a step used, due when the breaker lets a probe through, a
``retry_scheduled`` record), but without the claim: behind an endpoint that hangs, the
deliveries waiting for its share and those that came due while its probe was out would
otherwise each be claimed only to be held. Claims pass over the code while its hold runs.
Deliveries on their last step stay due and are claimed and attempted once it is done.

A claimed delivery is rebuilt from its event with the tracking code as it is now: a URL or a
password fixed during an outage is what the retry uses, and a code disabled meanwhile ends
the delivery ``skipped``.

A lease lasts ``lease`` seconds and ``_lease_routine`` renews the leases of the deliveries in
hand every third of it, so an attempt may take as long as it takes while a crashed instance's
deliveries are claimable again ``lease`` seconds after it died.

``_housekeeping_routine`` exports the schedule's counts and the age of its oldest overdue
delivery, refreshes the planner's statistics of the schedule when it has outgrown them,
forgets test ids that no longer have anything waiting, and makes due any delivery left
waiting behind one that was settled while it was being added.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Final, Protocol

import structlog

from consumer.delivery.deliverer import Deliverer, Delivery, Source, WaitingTests
from consumer.delivery.endpoints import CIRCUIT_OPEN, EndpointGate
from consumer.delivery.schedule import Progress, ScheduledDelivery, ScheduleStore
from consumer.delivery.webhook import endpoint_of
from consumer.errors import InvalidEvent, StoreUnavailable
from consumer.events import parse_event
from consumer.logs import detached_context
from consumer.metrics import Metrics
from consumer.outcomes import Outcome
from consumer.tracking_codes import TrackingCode
from consumer.triggers import Deliver, Skip, decide

log = structlog.get_logger(__name__)

CLAIM_BATCH: Final = 200
HOLD_BATCH: Final = 500  # rows held in one transaction when a breaker opens
MIN_CLAIM_GAP: Final = 0.02  # woken more often than this, claims are gathered up
HOUSEKEEPING_INTERVAL: Final = 5.0
PRUNE_EVERY: Final = 6  # housekeeping rounds between two prunes of the waiting test ids


class TrackingLookup(Protocol):
    async def get(self, code: str) -> TrackingCode | None: ...


class ScheduleRunner:
    def __init__(
        self,
        *,
        schedule: ScheduleStore,
        store: TrackingLookup,
        deliverer: Deliverer,
        gate: EndpointGate,
        waiting: WaitingTests,
        metrics: Metrics,
        capacity: int,
        poll_interval: float,
        lease: float,
    ) -> None:
        self.schedule = schedule
        self.store = store
        self.deliverer = deliverer
        self.gate = gate
        self.waiting = waiting
        self.metrics = metrics
        self.capacity = capacity
        self.poll_interval = poll_interval
        self.lease = lease
        self._tasks: dict[asyncio.Task[None], int] = {}  # task -> the row it works on
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._routines: list[asyncio.Task[None]] = []
        self._holds: dict[asyncio.Task[None], str] = {}  # bulk hold -> its code

    def wake(self) -> None:
        self._wakeup.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def holding(self) -> int:
        """Codes whose due deliveries are being held in bulk."""
        return len(self._holds)

    def claim_exclusions(self) -> list[str]:
        """Codes whose due deliveries a claim passes over now: the deliverer's (share
        full, probe out, deliveries waiting for a slot) and those being held in bulk."""
        excluded = self.deliverer.excluded_codes()
        if not self._holds:
            return excluded  # the usual case: already sorted, without duplicates
        return sorted(set(excluded).union(self._holds.values()))

    def start(self) -> None:
        self._routines = [
            asyncio.create_task(self._claim_routine(), name="schedule_claim"),
            asyncio.create_task(self._housekeeping_routine(), name="schedule_housekeeping"),
            asyncio.create_task(self._lease_routine(), name="schedule_lease"),
        ]
        for routine in self._routines:
            routine.add_done_callback(_log_crash)

    async def shutdown(self, drain_timeout: float) -> bool:
        """Stop claiming, let the attempts in hand finish within ``drain_timeout``, cancel
        the rest and give back every lease; True when all finished in time."""
        self._stopping = True
        for routine in self._routines:
            routine.cancel()
        await asyncio.gather(*self._routines, return_exceptions=True)
        drained = True
        if self._tasks or self._holds:
            # A bulk hold in progress publishes the records of the rows it has held.
            _, left = await asyncio.wait({*self._tasks, *self._holds}, timeout=drain_timeout)
            drained = not left
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):
            await self.schedule.release_all()
        return drained

    # -- claiming -----------------------------------------------------------------------

    async def _claim_routine(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.poll_interval
        while not self._stopping:
            self.gate.refresh()
            free = self.capacity - len(self._tasks)
            wanted = min(free, CLAIM_BATCH)
            claimed: list[ScheduledDelivery] = []
            started = loop.time()
            if wanted > 0:
                try:
                    claimed = await self.schedule.claim(
                        wanted, exclude=self.claim_exclusions(), lease=self.lease
                    )
                except StoreUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = self.poll_interval
            for row in claimed:
                self._spawn(row)
            self.metrics.scheduled_in_flight.set(len(self._tasks))
            if claimed and len(claimed) == wanted:
                await asyncio.sleep(MIN_CLAIM_GAP)  # more are due: claim again soon
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wakeup.wait()
            gap = MIN_CLAIM_GAP - (loop.time() - started)
            if gap > 0:
                await asyncio.sleep(gap)

    def _spawn(self, row: ScheduledDelivery) -> None:
        task = asyncio.create_task(self._run(row))
        self._tasks[task] = row.id
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._wakeup.set()

    async def _lease_routine(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(StoreUnavailable):  # logged by the store
                await self.schedule.renew(list(self._tasks.values()), self.lease)

    async def _run(self, row: ScheduledDelivery) -> None:
        with structlog.contextvars.bound_contextvars(
            event_id=row.event_id, test_id=row.test_id, delivery_id=row.id
        ):
            try:
                await self._attempt(row)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not stop the runner: logged with its traceback; the row's lease
                # runs out and it is tried again.
                log.exception("scheduled_delivery_crashed")

    async def _attempt(self, row: ScheduledDelivery) -> None:
        try:
            delivery = _rebuilt(row)
        except InvalidEvent as exc:
            # Only a row edited by hand can get here: keep it, dead, for a person to see.
            log.error(  # noqa: TRY400 - the rule is the message; a traceback says nothing more
                "scheduled_event_unreadable", field=exc.field, rule=exc.rule
            )
            await self.schedule.kill(row.id, Progress(row.attempts, row.step, "invalid_event"))
            return
        event = delivery.event
        code = await self.store.get(event.tracking_code) if event.tracking_code else None
        decision = decide(event, code)
        if isinstance(decision, Deliver):
            await self.deliverer.deliver(delivery, decision.tracking_code)
            return
        # The code was disabled, removed, or no longer asks for Finished since the event
        # joined the schedule: nothing is sent, and the delivery ends skipped.
        reason = decision.reason if isinstance(decision, Skip) else decision.why
        log.info("webhook_skipped", reason=reason, trigger=row.trigger, scheduled=True)
        await self.deliverer.settle(delivery, Outcome.SKIPPED, reason)

    # -- an open breaker ----------------------------------------------------------------

    def breaker_opened(self, code: str) -> None:
        """``code``'s breaker has just opened: hold its due deliveries in bulk. Claims pass
        over the code meanwhile (each would only be held), and take its deliveries again
        once the hold is done: those on their last step, and those come due later."""
        if self._stopping or code in self._holds.values():
            return  # a hold in progress goes on while the breaker stays open
        # Not about the event whose attempt opened the breaker: its lines must not name it.
        task = asyncio.create_task(
            self._hold_open(code), name="schedule_hold_open", context=detached_context()
        )
        self._holds[task] = code
        task.add_done_callback(self._hold_done)
        task.add_done_callback(_log_crash)

    def _hold_done(self, task: asyncio.Task[None]) -> None:
        self._holds.pop(task, None)
        self._wakeup.set()

    async def _hold_open(self, name: str) -> None:
        try:
            code = await self.store.get(name)
        except StoreUnavailable:
            return  # stopping: the claims hold the deliveries one by one after a restart
        if code is None:
            return  # removed: claimed one by one, its deliveries end skipped
        held = 0
        while not self._stopping:
            reopens = self.gate.open_for(name)
            if reopens <= 0:
                break  # no longer open: a probe may go out
            rebuilt: dict[int, Delivery] = {}
            try:
                rows = await self.schedule.hold_due(
                    name,
                    before_step=len(self.deliverer.retry_schedule),
                    limit=HOLD_BATCH,
                    reason=CIRCUIT_OPEN,
                    endpoint_host=endpoint_of(code).host,
                    plan=functools.partial(self._plan_hold, code, reopens, rebuilt),
                )
            except StoreUnavailable:
                break  # logged by the store; the claims hold the deliveries one by one
            await asyncio.gather(
                *(self.deliverer.announce_held(rebuilt[row.id], code, due) for row, due in rows)
            )
            held += len(rows)
            if len(rows) < HOLD_BATCH:
                break
        if held:
            log.info("breaker_open_held", tracking_code=name, deliveries=held)

    def _plan_hold(
        self,
        code: TrackingCode,
        reopens: float,
        rebuilt: dict[int, Delivery],
        rows: list[ScheduledDelivery],
    ) -> dict[int, float]:
        """Seconds to hold each of ``rows`` (by id), each rebuilt into ``rebuilt``. Only
        what a claim would hold: a row whose event is unreadable, or no longer triggers for
        the code as it is now, is left to the claim that settles it."""
        delays: dict[int, float] = {}
        for row in rows:
            try:
                delivery = _rebuilt(row)
            except InvalidEvent:
                continue
            if isinstance(decide(delivery.event, code), Deliver):
                rebuilt[row.id] = delivery
                delays[row.id] = self.deliverer.held_delay(row.step, reopens)
        return delays

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeeping_routine(self) -> None:
        rounds = 0
        while not self._stopping:
            rounds += 1
            try:
                stats = await self.schedule.stats()
                self.metrics.scheduled.labels("pending").set(stats.pending)
                self.metrics.scheduled.labels("dead").set(stats.dead)
                self.metrics.oldest_overdue.set(stats.oldest_overdue_seconds)
                if stats.statistics_stale:
                    await self.schedule.analyze()
                    log.info(
                        "schedule_analyzed",
                        rows=stats.pending + stats.dead,
                        planned_rows=stats.planned_rows,
                    )
                if rounds % PRUNE_EVERY == 0:
                    await self._prune_waiting()
                    if freed := await self.schedule.free_behind():
                        log.info("schedule_behind_freed", deliveries=freed)
            except StoreUnavailable:
                pass  # logged by the store; the next round tries again
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def _prune_waiting(self) -> None:
        checked, since = self.waiting.snapshot()
        if not checked:
            return
        still = await self.schedule.still_waiting(sorted(checked))
        self.waiting.prune(still, checked, since)


def _rebuilt(row: ScheduledDelivery) -> Delivery:
    """The delivery of a row, its event parsed (``InvalidEvent`` for a row edited by hand)."""
    return Delivery(
        event=parse_event(row.event),
        raw=row.event,
        trigger=row.trigger,
        source=Source(row.source_topic, row.source_partition, row.source_offset),
        row_id=row.id,
        attempts=row.attempts,
        step=row.step,
    )


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("schedule_routine_crashed", exc_info=exc)
