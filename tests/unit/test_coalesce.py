"""The schedule's batching of writes: one flush per moment, each caller its own answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from consumer.delivery.coalesce import Coalescer, Flush
from consumer.errors import StoreUnavailable


class Recorder:
    """A flush that records its batches; odd items fail. Gated, it waits for ``gate``."""

    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def flush(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


@contextlib.asynccontextmanager
async def running(flush: Flush[int, int]) -> AsyncIterator[Coalescer[int, int]]:
    batcher: Coalescer[int, int] = Coalescer("test", flush)
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.close()


async def test_calls_of_one_loop_tick_share_one_flush() -> None:
    recorder = Recorder()
    async with running(recorder.flush) as batcher:
        results = await asyncio.gather(*(batcher.submit(i) for i in [0, 2, 4]))
    assert results == [0, 20, 40]
    assert recorder.batches == [[0, 2, 4]]


async def test_an_item_s_exception_goes_to_its_caller_only() -> None:
    async with running(Recorder().flush) as batcher:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert results[1] == 20


async def test_calls_made_while_a_flush_runs_form_the_next_batch() -> None:
    recorder = Recorder(gated=True)
    async with running(recorder.flush) as batcher:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        later = [asyncio.ensure_future(batcher.submit(i)) for i in [2, 4]]
        await asyncio.sleep(0.01)
        recorder.gate.set()
        assert await first == 0
        assert await asyncio.gather(*later) == [20, 40]
    assert recorder.batches == [[0], [2, 4]]


async def test_a_failing_flush_fails_its_batch_and_stops_taking_calls() -> None:
    async def broken(items: list[int]) -> list[int | BaseException]:
        raise RuntimeError("bug")

    async with running(broken) as batcher:
        with pytest.raises(RuntimeError):
            await batcher.submit(1)
        await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable):
            await batcher.submit(2)


async def test_closing_mid_flush_tells_its_callers_it_was_not_written() -> None:
    async with running(Recorder(gated=True).flush) as batcher:  # never opened: it hangs
        waiting = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        await batcher.close()
        with pytest.raises(StoreUnavailable, match="closed"):
            await waiting


async def test_a_cancelled_caller_leaves_its_item_to_be_written() -> None:
    recorder = Recorder(gated=True)
    async with running(recorder.flush) as batcher:
        caller = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)
        caller.cancel()
        recorder.gate.set()
        await asyncio.sleep(0.01)
    assert recorder.batches == [[0]]
