"""Many calls, one statement: the schedule's writes gathered into batches.

``Coalescer.submit`` hands an item to a routine that runs ``flush`` on every item submitted
in the same loop tick, or while the flush before ran, and gives each caller its own result.
One flush runs at a time, so under load a batch grows to what arrived during the last round
trip, and when idle an item waits one loop tick.

``flush`` returns one entry per item, in order: the item's result, or the exception that
item's caller gets (one row refused must not fail the others). An exception ``flush`` raises
fails the whole batch and stops the routine: the store's flushes wait out outages
themselves, so only closing or a bug gets there. A caller that is cancelled does not take
its item back: what was handed over is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from consumer.errors import StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class Coalescer(Generic[T, R]):
    def __init__(self, name: str, flush: Flush[T, R]) -> None:
        self.name = name
        self._flush = flush
        self._items: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._routine: asyncio.Task[None] | None = None
        self.flushes = 0

    def start(self) -> None:
        self._routine = asyncio.create_task(self._run(), name=f"schedule_{self.name}")
        self._routine.add_done_callback(self._ended)

    async def submit(self, item: T) -> R:
        if self._routine is None or self._routine.done():
            raise StoreUnavailable("the schedule is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        self._wakeup.set()
        return await asyncio.shield(future)

    async def close(self) -> None:
        if self._routine is not None:
            self._routine.cancel()
            await asyncio.wait([self._routine])
        self._fail_waiting(StoreUnavailable("the schedule is closed"))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(0)  # the calls of this loop tick join the batch
            self._wakeup.clear()
            batch, self._items = self._items, []
            if not batch:
                continue
            self.flushes += 1
            try:
                results = await self._flush([item for item, _ in batch])
            except asyncio.CancelledError:
                # Closed mid-flush: whether the batch was written is unknown, and its
                # callers are told it was not.
                for _, future in batch:
                    _fail(future, StoreUnavailable("the schedule is closed"))
                raise
            except Exception as exc:
                for _, future in batch:
                    _fail(future, exc)
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    _fail(future, result)
                else:
                    future.set_result(result)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Whatever stopped the routine, no call is left waiting for it."""
        reason = "the schedule is closed"
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(f"schedule_{self.name}_stopped", error=type(exc).__name__, exc_info=exc)
            reason = f"schedule {self.name} stopped ({type(exc).__name__})"
        self._fail_waiting(StoreUnavailable(reason))

    def _fail_waiting(self, exc: BaseException) -> None:
        items, self._items = self._items, []
        for _, future in items:
            _fail(future, exc)


def _fail(future: asyncio.Future[R], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: a caller that gave up leaves no warning behind
