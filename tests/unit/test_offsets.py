"""``OffsetTracker``: which offsets may be committed when records finish out of order."""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.offsets import OffsetTracker, PartitionOffsets

P0: Final = ("exam-events", 0)
P1: Final = ("exam-events", 1)


def tracker_with(tp: tuple[str, int], offsets: range | list[int]) -> OffsetTracker[tuple[str, int]]:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.assign([tp])
    for offset in offsets:
        tracker.add(tp, offset)
    return tracker


def test_nothing_to_commit_before_anything_is_fetched() -> None:
    """An assigned partition with no fetched record has no committable offset."""
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.assign([P0])
    assert tracker.to_commit() == {}
    assert PartitionOffsets().committable() is None


def test_committable_is_first_unfinished_offset() -> None:
    """While the first fetched record runs, the committable offset stays at it."""
    partition = PartitionOffsets()
    for offset in (10, 11, 12):
        partition.add(offset)
    assert partition.committable() == 10
    partition.finish(11)
    partition.finish(12)
    assert partition.committable() == 10


def test_committable_is_next_offset_to_read_when_all_finished() -> None:
    """When every fetched record is finished, commit the last one + 1."""
    partition = PartitionOffsets()
    for offset in (10, 11, 12):
        partition.add(offset)
    for offset in (10, 11, 12):
        partition.finish(offset)
    assert partition.committable() == 13


def test_out_of_order_finishes_commit_only_the_contiguous_prefix() -> None:
    """Finishes past a gap do not move the committable offset until the gap is filled."""
    partition = PartitionOffsets()
    for offset in range(10, 15):
        partition.add(offset)
    steps = [(12, 10), (10, 11), (14, 11), (11, 13), (13, 15)]
    seen = []
    for finished, _ in steps:
        partition.finish(finished)
        seen.append(partition.committable())
    assert seen == [committable for _, committable in steps]


def test_offsets_missing_from_the_log_do_not_block() -> None:
    """Offsets never fetched (compaction, transaction markers) are skipped over."""
    partition = PartitionOffsets()
    for offset in (5, 8, 9):
        partition.add(offset)
    partition.finish(5)
    assert partition.committable() == 8
    partition.finish(9)
    partition.finish(8)
    assert partition.committable() == 10


def test_fetching_an_offset_again_or_backwards_is_refused() -> None:
    """Offsets must be added in increasing order."""
    partition = PartitionOffsets()
    partition.add(3)
    with pytest.raises(ValueError, match="out of order"):
        partition.add(3)
    with pytest.raises(ValueError, match="out of order"):
        partition.add(2)


def test_finishing_an_offset_twice_changes_nothing() -> None:
    """A second finish of the same record is harmless."""
    partition = PartitionOffsets()
    for offset in (0, 1, 2):
        partition.add(offset)
    partition.finish(0)
    partition.finish(0)
    assert partition.committable() == 1
    partition.finish(1)
    partition.finish(1)
    assert partition.committable() == 2


def test_finish_of_an_offset_not_yet_fetched_does_not_count_later() -> None:
    """Finishing an offset before it was fetched does not mark the later fetch finished."""
    partition = PartitionOffsets()
    partition.add(0)
    partition.finish(1)
    partition.add(1)
    partition.finish(0)
    assert partition.committable() == 1


def test_to_commit_covers_every_partition_that_moved() -> None:
    """Each partition reports its own committable offset."""
    tracker = tracker_with(P0, range(3))
    tracker.assign([P1])
    tracker.add(P1, 7)
    tracker.finish(P0, 0)
    tracker.finish(P1, 7)
    assert tracker.to_commit() == {P0: 1, P1: 8}
    assert tracker.to_commit([P1]) == {P1: 8}


def test_to_commit_returns_only_offsets_moved_since_committed() -> None:
    """After ``committed()``, a partition is reported again only once its offset moves."""
    tracker = tracker_with(P0, range(3))
    tracker.finish(P0, 0)
    assert tracker.to_commit() == {P0: 1}
    tracker.committed({P0: 1})
    assert tracker.to_commit() == {}
    tracker.finish(P0, 2)
    assert tracker.to_commit() == {}
    tracker.finish(P0, 1)
    assert tracker.to_commit() == {P0: 3}


def test_revoke_drops_the_partition() -> None:
    """A revoked partition is neither in flight nor committed."""
    tracker = tracker_with(P0, range(3))
    tracker.finish(P0, 0)
    tracker.revoke([P0])
    assert tracker.to_commit() == {}
    assert tracker.in_flight() == 0


def test_finish_after_revoke_is_ignored() -> None:
    """A record finishing after its partition was revoked changes nothing."""
    tracker = tracker_with(P0, range(3))
    tracker.revoke([P0])
    tracker.finish(P0, 0)
    assert tracker.to_commit() == {}
    assert tracker.in_flight([P0]) == 0


def test_reassigned_partition_starts_afresh() -> None:
    """After revoke and assign, offsets finished before the revoke are forgotten."""
    tracker = tracker_with(P0, range(3))
    tracker.finish(P0, 0)
    tracker.committed({P0: 1})
    tracker.revoke([P0])
    tracker.assign([P0])
    tracker.add(P0, 1)
    assert tracker.to_commit() == {P0: 1}


def test_in_flight_counts_unfinished_records() -> None:
    """``in_flight`` counts fetched records not finished, whatever finished around them."""
    tracker = tracker_with(P0, range(4))
    tracker.assign([P1])
    tracker.add(P1, 0)
    tracker.finish(P0, 0)
    tracker.finish(P0, 2)
    assert tracker.in_flight() == 3
    assert tracker.in_flight([P0]) == 2
    assert tracker.in_flight([("other", 0)]) == 0


def test_uncommitted_counts_from_the_first_unfinished_record() -> None:
    """One slow record keeps every record fetched after it uncommitted, finished or not."""
    tracker = tracker_with(P0, range(5))
    for offset in (0, 2, 3, 4):
        tracker.finish(P0, offset)
    assert tracker.in_flight() == 1
    assert tracker.uncommitted(P0) == 4
    tracker.finish(P0, 1)
    assert tracker.uncommitted(P0) == 0
    assert tracker.uncommitted(P1) == 0


@given(
    start=st.integers(min_value=0, max_value=10**12),
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    data=st.data(),
)
def test_committable_never_passes_an_unfinished_offset(
    start: int, gaps: list[int], data: st.DataObject
) -> None:
    """In any finish order, the committed offset never passes an unfinished record and
    ends at the last offset + 1."""
    offsets = [start + sum(gaps[:i]) for i in range(len(gaps))]
    tracker = tracker_with(P0, offsets)
    order = data.draw(st.permutations(offsets))
    finished: set[int] = set()
    last_commit = None
    for offset in order:
        tracker.finish(P0, offset)
        finished.add(offset)
        moved = tracker.to_commit()
        if moved:
            commit = moved[P0]
            unfinished = [o for o in offsets if o not in finished]
            assert all(commit <= o for o in unfinished)
            assert last_commit is None or commit > last_commit
            assert commit == (min(unfinished) if unfinished else offsets[-1] + 1)
            tracker.committed(moved)
            last_commit = commit
    assert last_commit == offsets[-1] + 1
    assert tracker.in_flight() == 0
