"""Which offsets may be committed. Pure: no I/O.

Records of a partition finish out of order; only the highest offset below which every
record is finished may be committed (the "offset map" of Confluent's Parallel Consumer).
Two counts come of it: records *in flight* (fetched, not finished) and records *uncommitted*
(fetched from the first unfinished one on, finished or not). A slow record holds its
partition's uncommitted count up while the records after it finish, so back-pressure bounds
the first globally and the second per partition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

TP = TypeVar("TP", bound=Hashable)


class PartitionOffsets:
    """Offsets of one partition that are fetched and not yet committable, in fetch order."""

    __slots__ = ("_committed", "_pending", "_unfinished")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._unfinished: set[int] = set()
        self._committed: int | None = None

    def __len__(self) -> int:
        """Records fetched and not yet committable: from the first unfinished one on."""
        return len(self._pending)

    def unfinished(self) -> int:
        return len(self._unfinished)

    def add(self, offset: int) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} fetched out of order after {self._pending[-1]}")
        self._pending.append(offset)
        self._unfinished.add(offset)

    def finish(self, offset: int) -> None:
        """Mark a fetched record finished; an offset not waiting to finish is ignored."""
        if offset not in self._unfinished:
            return
        self._unfinished.discard(offset)
        while self._pending and self._pending[0] not in self._unfinished:
            self._committed = self._pending.popleft() + 1

    def committable(self) -> int | None:
        """The offset to commit: every fetched record below it is finished.

        None until something was fetched.
        """
        if self._pending:
            return self._pending[0]
        return self._committed


class OffsetTracker(Generic[TP]):
    """The ``PartitionOffsets`` of every assigned partition, and what was last committed."""

    def __init__(self) -> None:
        self._partitions: dict[TP, PartitionOffsets] = {}
        self._last_commit: dict[TP, int] = {}

    def assign(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self._partitions.setdefault(tp, PartitionOffsets())

    def revoke(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self._partitions.pop(tp, None)
            self._last_commit.pop(tp, None)

    def add(self, tp: TP, offset: int) -> None:
        partition = self._partitions.get(tp)
        if partition is None:
            partition = self._partitions[tp] = PartitionOffsets()
        partition.add(offset)

    def finish(self, tp: TP, offset: int) -> None:
        """Mark a record finished; a partition revoked meanwhile is ignored."""
        partition = self._partitions.get(tp)
        if partition is not None:
            partition.finish(offset)

    def in_flight(self, partitions: Iterable[TP] | None = None) -> int:
        """Records fetched and not yet finished."""
        chosen = self._partitions if partitions is None else partitions
        return sum(self._partitions[tp].unfinished() for tp in chosen if tp in self._partitions)

    def uncommitted(self, tp: TP) -> int:
        """Records of ``tp`` fetched and not yet committable, finished or not."""
        partition = self._partitions.get(tp)
        return len(partition) if partition is not None else 0

    def to_commit(self, partitions: Iterable[TP] | None = None) -> dict[TP, int]:
        """The offsets that moved since the last ``committed()`` call."""
        chosen = list(self._partitions if partitions is None else partitions)
        out: dict[TP, int] = {}
        for tp in chosen:
            partition = self._partitions.get(tp)
            if partition is None:
                continue
            offset = partition.committable()
            if offset is not None and offset != self._last_commit.get(tp):
                out[tp] = offset
        return out

    def committed(self, offsets: dict[TP, int]) -> None:
        self._last_commit.update(offsets)
