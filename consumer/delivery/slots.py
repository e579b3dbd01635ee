"""``Slots``: a counting semaphore for the sender's hot path.

``asyncio.Semaphore.acquire`` asks ``locked()``, which builds a generator over the waiters
on every call, even with none; with two semaphores per request that was 3-4% of the
service's CPU in a profile. Here a free slot with nobody waiting is taken with one test.
Waiters are served first come, first served, and a released slot goes straight to the first
of them, so a newcomer cannot take it in between.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    __slots__ = ("_free", "_waiters")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("Slots needs at least one slot")
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    async def acquire(self) -> None:
        if self._free and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as the cancellation came: pass it on
            else:
                # A release may have skipped it already.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
