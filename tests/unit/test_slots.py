"""``Slots``: a counting semaphore that serves its waiters in order."""

from __future__ import annotations

import asyncio

import pytest

from consumer.delivery.slots import Slots


async def test_free_slots_are_taken_at_once_and_the_next_caller_waits() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    assert slots.free == 0
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()
    slots.release()
    await asyncio.wait_for(third, 1)
    assert slots.free == 0, "the released slot went to the waiter"


async def test_waiters_get_slots_in_the_order_they_asked() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[int] = []

    async def take(number: int) -> None:
        await slots.acquire()
        order.append(number)

    waiting = [asyncio.ensure_future(take(number)) for number in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]


async def test_a_released_slot_is_not_taken_by_a_newcomer_while_someone_waits() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()
    newcomer = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0.01)
    assert waiter.done()
    assert not newcomer.done()
    newcomer.cancel()


async def held_with_two_waiters() -> tuple[Slots, asyncio.Future[None], asyncio.Future[None]]:
    """One slot, taken, and two callers queued for it in turn."""
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    return slots, first, second


async def test_a_cancelled_waiter_leaves_the_queue_and_the_slot_goes_to_the_next() -> None:
    slots, first, second = await held_with_two_waiters()
    first.cancel()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.wait_for(second, 1)
    slots.release()
    assert slots.free == 1


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    slots, first, second = await held_with_two_waiters()
    slots.release()  # handed to the first waiter...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert slots.free == 0


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Slots(0)
