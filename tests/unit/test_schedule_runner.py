"""The schedule runner's bookkeeping around a bulk hold, with in-memory fakes.

The claims and holds themselves run against Postgres in tests/integration/test_schedule.py
and tests/integration/test_retries.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from structlog.testing import capture_logs

from consumer.delivery.breaker import BreakerPolicy
from consumer.delivery.deliverer import WaitingTests
from consumer.delivery.schedule import ScheduledDelivery, ScheduleStore
from consumer.delivery.scheduler import ScheduleRunner
from consumer.errors import StoreUnavailable
from consumer.metrics import Metrics
from consumer.tracking_codes import TrackingCode
from tests.fakes import FakeSender
from tests.unit.test_deliverer import CODE, make, open_breaker


class BlockedHolds:
    """A schedule whose bulk hold waits until released, and finds nothing to hold."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def hold_due(self, code: str, **_: Any) -> list[tuple[ScheduledDelivery, float]]:
        self.started.set()
        await self.release.wait()
        return []


class Lookup:
    async def get(self, code: str) -> TrackingCode | None:
        return CODE if code == CODE.code else None


class StoppedLookup:
    async def get(self, code: str) -> TrackingCode | None:
        raise StoreUnavailable("the tracking-code store is not running")


async def runner_for(store: Lookup | StoppedLookup, schedule: BlockedHolds) -> ScheduleRunner:
    """A runner whose deliverer has seen ``CODE``'s breaker open."""
    deliverer, _, _, _ = make((5.0, 300.0), FakeSender(status=503), BreakerPolicy(min_attempts=2))
    await open_breaker(deliverer)
    return ScheduleRunner(
        schedule=cast(ScheduleStore, schedule),
        store=store,
        deliverer=deliverer,
        gate=deliverer.gate,
        waiting=WaitingTests(),
        metrics=Metrics(),
        capacity=10,
        poll_interval=1.0,
        lease=30.0,
    )


async def until_no_hold(runner: ScheduleRunner) -> None:
    async with asyncio.timeout(5):
        while runner.holding:
            await asyncio.sleep(0)


async def test_claims_pass_over_a_code_while_its_deliveries_are_held_in_bulk() -> None:
    """Claiming a code's rows while its opened breaker holds them in bulk would hold them
    one by one, each claimed only to be held: the claims pass over the code until the
    hold is done, then take its deliveries again (those on their last step are attempted)."""
    schedule = BlockedHolds()
    runner = await runner_for(Lookup(), schedule)
    assert runner.claim_exclusions() == []
    runner.breaker_opened(CODE.code)
    runner.breaker_opened(CODE.code)  # opened again while held: one hold is enough
    await asyncio.wait_for(schedule.started.wait(), 5)
    assert runner.claim_exclusions() == [CODE.code]
    assert runner.holding == 1
    schedule.release.set()
    await until_no_hold(runner)
    assert runner.claim_exclusions() == []


async def test_a_hold_whose_code_cannot_be_read_ends_quietly_and_the_claims_go_on() -> None:
    """While the service stops, the tracking-code store may be gone: the hold gives up
    without an error line and without touching the schedule."""
    schedule = BlockedHolds()
    runner = await runner_for(StoppedLookup(), schedule)
    with capture_logs() as logs:
        runner.breaker_opened(CODE.code)
        await until_no_hold(runner)
    assert not schedule.started.is_set()
    assert [e for e in logs if e["log_level"] == "error"] == []
    assert runner.claim_exclusions() == []
