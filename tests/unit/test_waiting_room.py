"""Deliveries waiting in the process for a slot of their tracking code."""

from __future__ import annotations

import asyncio

from consumer.delivery.breaker import BreakerPolicy
from consumer.delivery.endpoints import BUSY, CIRCUIT_OPEN, Admit, EndpointGate, Hold
from consumer.delivery.waiting_room import WaitingRoom
from consumer.tracking_codes import TrackingCode

CODE = TrackingCode(code="ACME", endpoint_url="https://hooks.example.edu/x")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def room_with(share: int, max_wait: float) -> tuple[WaitingRoom, EndpointGate, Clock]:
    clock = Clock()
    gate = EndpointGate(share, BreakerPolicy(), clock=clock)
    room = WaitingRoom(gate, max_wait)
    gate.on_freed = room.slot_freed
    return room, gate, clock


async def test_a_free_slot_is_taken_at_once() -> None:
    room, _, _ = room_with(share=1, max_wait=1.0)
    assert isinstance(await room.admit(CODE, last_step=False), Admit)


async def test_waiters_get_freed_slots_first_come_first_served() -> None:
    room, gate, clock = room_with(share=1, max_wait=1.0)
    held = await room.admit(CODE, last_step=False)
    assert isinstance(held, Admit)
    order: list[str] = []

    async def wait(name: str) -> None:
        admission = await room.admit(CODE, last_step=False)
        assert isinstance(admission, Admit)
        order.append(name)
        await asyncio.sleep(0)
        gate.done(admission, ok=True)

    waiters = [asyncio.create_task(wait(n)) for n in "abc"]
    await asyncio.sleep(0)
    assert room.waiting("ACME") == 3
    clock.now += 0.001
    gate.done(held, ok=True)
    await asyncio.gather(*waiters)
    assert order == ["a", "b", "c"]
    assert room.waiting("ACME") == 0


async def test_a_slow_code_sends_the_delivery_on_to_the_schedule_at_once() -> None:
    """Attempts that take 10 s with one slot: the expected wait is far beyond max_wait."""
    room, _gate, clock = room_with(share=1, max_wait=1.0)
    held = await room.admit(CODE, last_step=False)
    assert isinstance(held, Admit)
    clock.now += 10.0  # the attempt in flight is 10 s old: a hanging endpoint
    assert await room.admit(CODE, last_step=False) == Hold(BUSY)
    assert room.waiting("ACME") == 0


async def test_a_waiter_leaves_for_the_schedule_after_twice_max_wait() -> None:
    room, _, _ = room_with(share=1, max_wait=0.05)
    await room.admit(CODE, last_step=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await room.admit(CODE, last_step=False) == Hold(BUSY)
    assert 0.09 <= loop.time() - started < 0.5
    assert room.waiting("ACME") == 0


async def test_a_new_delivery_queues_behind_waiters_rather_than_take_their_slot() -> None:
    room, gate, _ = room_with(share=1, max_wait=1.0)
    held = await room.admit(CODE, last_step=False)
    assert isinstance(held, Admit)
    first = asyncio.create_task(room.admit(CODE, last_step=False))
    await asyncio.sleep(0)
    second = asyncio.create_task(room.admit(CODE, last_step=False))
    await asyncio.sleep(0)
    assert room.codes() == ["ACME"]
    gate.done(held, ok=True)
    got = await first
    assert isinstance(got, Admit)
    assert not second.done()
    gate.done(got, ok=True)
    assert isinstance(await second, Admit)


async def test_a_slot_handed_to_a_waiter_that_left_goes_to_the_next() -> None:
    room, gate, _ = room_with(share=1, max_wait=1.0)
    held = await room.admit(CODE, last_step=False)
    assert isinstance(held, Admit)
    leaving = asyncio.create_task(room.admit(CODE, last_step=False))
    await asyncio.sleep(0)
    staying = asyncio.create_task(room.admit(CODE, last_step=False))
    await asyncio.sleep(0)
    gate.done(held, ok=True)  # hands the slot to `leaving` ...
    leaving.cancel()  # ... which is cancelled before it can use it
    await asyncio.gather(leaving, return_exceptions=True)
    assert isinstance(await asyncio.wait_for(staying, 1), Admit)


def test_the_latency_estimate_follows_finished_attempts() -> None:
    clock = Clock()
    gate = EndpointGate(10, BreakerPolicy(), clock=clock)
    for _ in range(20):
        admitted = gate.admit(CODE)
        assert isinstance(admitted, Admit)
        clock.now += 0.2
        gate.done(admitted, ok=True)
    assert 0.19 <= gate.latency_estimate("ACME") <= 0.21
    assert abs(gate.expected_wait("ACME", ahead=9) - 0.2) < 0.01


async def test_waiters_leave_at_once_when_the_breaker_opens_while_they_wait() -> None:
    """No attempt will free a slot once the breaker is open: the waiters must not sit out
    their 2 x max_wait, each holding its place in the in-flight window."""
    clock = Clock()
    gate = EndpointGate(2, BreakerPolicy(min_attempts=2, failure_ratio=0.5), clock=clock)
    room = WaitingRoom(gate, max_wait=5.0)
    gate.on_freed = room.slot_freed
    in_flight = [await room.admit(CODE, last_step=False) for _ in range(2)]
    waiters = [asyncio.create_task(room.admit(CODE, last_step=False)) for _ in range(5)]
    await asyncio.sleep(0)
    assert room.waiting("ACME") == 5
    for admitted in in_flight:
        assert isinstance(admitted, Admit)
        gate.done(admitted, ok=False)  # two failures of two: the breaker opens
    answers = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert answers == [Hold(CIRCUIT_OPEN)] * 5
    assert room.waiting("ACME") == 0
