"""The topic configuration the service creates its topics with."""

from __future__ import annotations

import pytest

from consumer.topics import creation_configs


@pytest.mark.parametrize(("factor", "min_insync"), [(1, "1"), (2, "2"), (3, "2"), (5, "2")])
def test_min_insync_replicas_is_two_or_the_replica_count(factor: int, min_insync: str) -> None:
    """acks=all writes wait for two replicas, or for every replica when there are fewer."""
    assert creation_configs(["t"], factor, {}) == {"t": {"min.insync.replicas": min_insync}}


def test_a_topic_s_own_configs_are_merged_and_win() -> None:
    """The dead-letter topic keeps its size limit beside min.insync.replicas; a caller that
    sets min.insync.replicas itself keeps its value."""
    configs = creation_configs(
        ["events", "dlq", "odd"],
        3,
        {"dlq": {"max.message.bytes": "16777216"}, "odd": {"min.insync.replicas": "3"}},
    )
    assert configs == {
        "events": {"min.insync.replicas": "2"},
        "dlq": {"min.insync.replicas": "2", "max.message.bytes": "16777216"},
        "odd": {"min.insync.replicas": "3"},
    }
