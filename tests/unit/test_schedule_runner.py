"""The schedule runner's bookkeeping around a bulk hold, with in-memory fakes.

The claims and holds themselves run against Postgres in tests/integration/test_schedule.py
and tests/integration/test_retries.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from consumer.delivery.breaker import BreakerPolicy
from consumer.delivery.deliverer import WaitingTests
from consumer.delivery.schedule import ScheduledDelivery, ScheduleStore
from consumer.delivery.scheduler import ScheduleRunner
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


async def test_claims_pass_over_a_code_while_its_deliveries_are_held_in_bulk() -> None:
    """Claiming a code's rows while its opened breaker holds them in bulk would hold them
    one by one, each claimed only to be held: the claims pass over the code until the
    hold is done, then take its deliveries again (those on their last step are attempted)."""
    deliverer, _, _, _ = make((5.0, 300.0), FakeSender(status=503), BreakerPolicy(min_attempts=2))
    await open_breaker(deliverer)
    schedule = BlockedHolds()
    runner = ScheduleRunner(
        schedule=cast(ScheduleStore, schedule),
        store=Lookup(),
        deliverer=deliverer,
        gate=deliverer.gate,
        waiting=WaitingTests(),
        metrics=Metrics(),
        capacity=10,
        poll_interval=1.0,
        lease=30.0,
    )
    assert runner.claim_exclusions() == []
    runner.breaker_opened(CODE.code)
    runner.breaker_opened(CODE.code)  # opened again while held: one hold is enough
    await asyncio.wait_for(schedule.started.wait(), 5)
    assert runner.claim_exclusions() == [CODE.code]
    assert runner.holding == 1
    schedule.release.set()
    async with asyncio.timeout(5):
        while runner.holding:
            await asyncio.sleep(0)
    assert runner.claim_exclusions() == []
