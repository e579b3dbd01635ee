"""Deliveries waiting in the process, briefly, for a free slot of their tracking code.

When a code has its whole share of attempts in flight, a delivery straight from its event
may wait here, first come first served, for one of them, but only while the wait looks
short: it joins when its expected wait (the deliveries ahead of it times the code's attempt
duration, over the share) is at most ``max_wait``, and leaves for the schedule
(``endpoint_busy``) when it has waited twice that. A fast partner with more traffic than its
share is served from here at full speed, with no round trip through Postgres; a slow or
hanging one has long attempts, so few deliveries are let in and those are soon sent on to
the schedule: its events never fill the in-flight window.

A slot that frees is handed to the first waiter (``slot_freed``); while anyone waits, a new
delivery of the code queues behind them rather than take the slot. A waiter woken to find
the code's breaker open leaves with that answer and wakes the next, so the room empties at
once when its code stops taking attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from consumer.delivery.endpoints import BUSY, Admission, EndpointGate, Hold
from consumer.tracking_codes import TrackingCode


class WaitingRoom:
    def __init__(self, gate: EndpointGate, max_wait: float) -> None:
        self.gate = gate
        self.max_wait = max_wait
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    def waiting(self, code: str) -> int:
        queue = self._queues.get(code)
        return len(queue) if queue is not None else 0

    def codes(self) -> list[str]:
        """Codes with deliveries waiting here (the schedule runner leaves them alone)."""
        return [code for code, queue in self._queues.items() if queue]

    def slot_freed(self, code: str) -> None:
        queue = self._queues.get(code)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                break
        if queue is not None and not queue:
            del self._queues[code]

    async def admit(self, code: TrackingCode, *, last_step: bool) -> Admission:
        """The gate's answer for ``code``, after waiting here for a slot when that is
        worth it; ``Hold(BUSY)`` when it is not, or the wait ran out."""
        name = code.code
        if not self.waiting(name):
            admission = self.gate.admit(code, last_step=last_step)
            if not (isinstance(admission, Hold) and admission.reason == BUSY):
                return admission
        if self.max_wait <= 0 or self.gate.expected_wait(name, self.waiting(name)) > self.max_wait:
            return Hold(BUSY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.max_wait
        first_time = True
        while True:
            future: asyncio.Future[None] = loop.create_future()
            queue = self._queues.setdefault(name, deque())
            if first_time:
                queue.append(future)
            else:
                queue.appendleft(future)  # woken, then beaten to the slot: keep its place
            first_time = False
            try:
                async with asyncio.timeout_at(deadline):
                    await future
            except TimeoutError:
                self._leave(name, future)
                return Hold(BUSY)
            except BaseException:
                self._leave(name, future)
                raise
            admission = self.gate.admit(code, last_step=last_step)
            if not isinstance(admission, Hold):
                return admission
            if admission.reason != BUSY:
                # The breaker opened while this one waited: the waiters behind it get the
                # same answer, so each wakes the next now rather than wait for a slot that
                # no attempt will free.
                self.slot_freed(name)
                return admission

    def _leave(self, code: str, future: asyncio.Future[None]) -> None:
        if future.done() and not future.cancelled():
            self.slot_freed(code)  # it was handed a slot it will not use: pass it on
            return
        future.cancel()
        queue = self._queues.get(code)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(future)
            if not queue:
                del self._queues[code]
