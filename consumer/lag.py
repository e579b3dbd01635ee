"""How far behind the group is, read from the broker for every assigned partition.

kafka_exporter's way: every ``LAG_INTERVAL`` the group's committed offset and the partition's
high watermark are read (each read bounded by ``LAG_TIMEOUT``) and exported as

- ``itep_consumer_lag{topic,partition}``: high watermark - committed offset, 0 on an idle
  topic. A partition the group has never committed on counts from its earliest offset, where
  the group starts reading it (``auto_offset_reset="earliest"``); a committed offset that
  retention has overtaken counts from the earliest offset too, the records below are gone.
- ``itep_consumer_commit_age_seconds{topic,partition}``: Burrow's stall, how long the
  committed offset has stood still while the partition has lag; 0 when caught up. A busy
  partition's age falls back to 0 at every commit, a stuck one's keeps growing.

Both series appear in the rebalance callback that assigns a partition and are removed when it
is revoked or the service stops, so each lists exactly the partitions this instance owns. A
read that fails or overruns its bound logs ``lag_unknown`` and leaves the last values.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumer.metrics import Metrics

log = structlog.get_logger(__name__)

LAG_INTERVAL: Final = 5.0
LAG_TIMEOUT: Final = 5.0

K = TypeVar("K", bound=Hashable)


# -- the decisions, pure ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition as the broker reported it."""

    committed: int | None  # the group's committed offset; None before its first commit
    earliest: int  # the first offset still in the log
    highwater: int  # the offset the next record will get


def position_of(offsets: PartitionOffsets) -> int:
    """Where the group stands on the partition: its committed offset, or the earliest one
    when it has none or retention has overtaken it."""
    if offsets.committed is None:
        return offsets.earliest
    return max(offsets.committed, offsets.earliest)


def lag_of(offsets: PartitionOffsets) -> int:
    """Records the group has still to consume on the partition."""
    return max(0, offsets.highwater - position_of(offsets))


class CommitAges(Generic[K]):
    """When each partition's position (``position_of``) last moved, or the partition last
    had no lag. A first commit at the offset where the group started is no move.

    The age counts from the first reading of a partition at most: a partition that comes
    with lag at its assignment starts at 0.
    """

    def __init__(self) -> None:
        self._since: dict[K, tuple[int, float]] = {}

    def observe(self, key: K, position: int, lag: int, now: float) -> float:
        """The commit age of ``key`` at ``now``, given its position and lag then."""
        seen = self._since.get(key)
        if seen is None or lag == 0 or seen[0] != position:
            self._since[key] = (position, now)
            return 0.0
        return now - seen[1]

    def forget(self, key: K) -> None:
        self._since.pop(key, None)


# -- the reads, against the broker -------------------------------------------------------


class OffsetSource(Protocol):
    """The reads of an ``AIOKafkaConsumer`` the monitor makes."""

    async def committed(self, partition: TopicPartition) -> int | None: ...

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...


class LagMonitor:
    """Keeps the lag and commit-age series of the assigned partitions."""

    def __init__(
        self,
        source: OffsetSource,
        metrics: Metrics,
        *,
        interval: float = LAG_INTERVAL,
        timeout: float = LAG_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._metrics = metrics
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._partitions: set[TopicPartition] = set()
        self._ages: CommitAges[TopicPartition] = CommitAges()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_routine(), name="lag_refresh")
        self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop refreshing and remove every series: this instance owns no partition now."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # a crash was logged when it happened
            self._task = None
        self.revoked(list(self._partitions))

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Track ``partitions`` and read them at once: their series exist from now on."""
        self._partitions.update(partitions)
        await self.refresh(partitions)

    def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.discard(tp)
            self._ages.forget(tp)
            for gauge in (self._metrics.lag, self._metrics.commit_age):
                with contextlib.suppress(KeyError):  # never read: no series to remove
                    gauge.remove(tp.topic, str(tp.partition))

    async def refresh(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Read ``partitions`` (all tracked ones when None) and set their series."""
        wanted = sorted(self._partitions if partitions is None else partitions)
        if not wanted:
            return
        try:
            async with asyncio.timeout(self._timeout):
                offsets = await self._read(wanted)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "lag_unknown",
                partitions=[str(tp) for tp in wanted],
                error=type(exc).__name__,
                waiting_for="Kafka",
            )
            return
        now = self._clock()
        for tp, read in offsets.items():
            if tp not in self._partitions:
                continue  # revoked while the broker answered
            lag = lag_of(read)
            labels = (tp.topic, str(tp.partition))
            self._metrics.lag.labels(*labels).set(lag)
            self._metrics.commit_age.labels(*labels).set(
                self._ages.observe(tp, position_of(read), lag, now)
            )

    async def _read(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, PartitionOffsets]:
        """The committed offsets first: the high watermark read after them is never below."""
        committed = [await self._source.committed(tp) for tp in partitions]
        earliest = await self._source.beginning_offsets(partitions)
        highwater = await self._source.end_offsets(partitions)
        return {
            tp: PartitionOffsets(offset, earliest[tp], highwater[tp])
            for tp, offset in zip(partitions, committed, strict=True)
            if tp in earliest and tp in highwater
        }

    async def _refresh_routine(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("lag_routine_crashed", exc_info=exc)
