"""Lag and commit age: the pure decisions with explicit times, the monitor with a fake broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from structlog.testing import capture_logs

from consumer.lag import CommitAges, LagMonitor, PartitionOffsets, lag_of, position_of
from consumer.metrics import Metrics

TP0 = TopicPartition("exam-events", 0)
TP1 = TopicPartition("exam-events", 1)


def test_lag_counts_from_the_committed_offset_to_the_high_watermark() -> None:
    assert lag_of(PartitionOffsets(committed=40, earliest=0, highwater=100)) == 60


def test_an_idle_partition_has_no_lag() -> None:
    assert lag_of(PartitionOffsets(committed=None, earliest=0, highwater=0)) == 0
    assert lag_of(PartitionOffsets(committed=7, earliest=0, highwater=7)) == 0


def test_a_partition_never_committed_counts_from_its_earliest_offset() -> None:
    assert lag_of(PartitionOffsets(committed=None, earliest=30, highwater=100)) == 70


def test_records_removed_by_retention_are_not_lag() -> None:
    assert lag_of(PartitionOffsets(committed=10, earliest=50, highwater=100)) == 50


def test_commit_age_grows_while_the_committed_offset_stands_still_with_lag() -> None:
    ages: CommitAges[str] = CommitAges()
    assert ages.observe("p", position=5, lag=3, now=100.0) == 0.0
    assert ages.observe("p", position=5, lag=3, now=105.0) == 5.0
    assert ages.observe("p", position=5, lag=9, now=160.0) == 60.0


def test_commit_age_falls_to_zero_when_the_committed_offset_moves() -> None:
    """Busy, not stuck: every commit starts the age again."""
    ages: CommitAges[str] = CommitAges()
    ages.observe("p", position=5, lag=3, now=100.0)
    assert ages.observe("p", position=8, lag=3, now=130.0) == 0.0
    assert ages.observe("p", position=8, lag=3, now=135.0) == 5.0


def test_commit_age_is_zero_while_caught_up_and_counts_from_the_last_time_it_was() -> None:
    """An idle partition's offset stands still for hours without a stall; once records
    arrive, the age counts from when it was last seen caught up."""
    ages: CommitAges[str] = CommitAges()
    assert ages.observe("p", position=5, lag=0, now=0.0) == 0.0
    assert ages.observe("p", position=5, lag=0, now=3600.0) == 0.0
    assert ages.observe("p", position=5, lag=2, now=3605.0) == 5.0


def test_commit_age_grows_for_a_partition_never_committed() -> None:
    """A stuck first record: nothing was ever committed, the lag stays."""
    ages: CommitAges[str] = CommitAges()
    ages.observe("p", position=0, lag=1, now=10.0)
    assert ages.observe("p", position=0, lag=1, now=70.0) == 60.0


def test_a_forgotten_partition_starts_again_from_zero() -> None:
    ages: CommitAges[str] = CommitAges()
    ages.observe("p", position=5, lag=3, now=0.0)
    ages.forget("p")
    assert ages.observe("p", position=5, lag=3, now=600.0) == 0.0


def test_partitions_age_independently() -> None:
    ages: CommitAges[str] = CommitAges()
    ages.observe("a", position=1, lag=1, now=0.0)
    ages.observe("b", position=1, lag=1, now=0.0)
    assert ages.observe("a", position=2, lag=1, now=10.0) == 0.0
    assert ages.observe("b", position=1, lag=1, now=10.0) == 10.0


class Broker:
    """The offsets a consumer would read from the broker, set by the test."""

    def __init__(self) -> None:
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.earliest: dict[TopicPartition, int] = {TP0: 0, TP1: 0}
        self.highwater: dict[TopicPartition, int] = {TP0: 0, TP1: 0}
        self.failing = False
        self.answered = asyncio.Event()

    async def committed(self, partition: TopicPartition) -> int | None:
        if self.failing:
            raise KafkaTimeoutError
        return self.committed_offsets.get(partition)

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: self.earliest[tp] for tp in partitions}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.answered.set()
        return {tp: self.highwater[tp] for tp in partitions}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, name: str, tp: TopicPartition) -> float | None:
    return metrics.registry.get_sample_value(
        name, {"topic": tp.topic, "partition": str(tp.partition)}
    )


def series(metrics: Metrics, name: str) -> set[str]:
    return {
        s.labels["partition"]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


async def test_an_assigned_partition_has_its_lag_at_once_zero_when_idle() -> None:
    metrics, broker = Metrics(), Broker()
    monitor = LagMonitor(broker, metrics, clock=Clock())
    await monitor.assigned([TP0, TP1])
    assert sample(metrics, "itep_consumer_lag", TP0) == 0
    assert sample(metrics, "itep_consumer_lag", TP1) == 0
    assert sample(metrics, "itep_consumer_commit_age_seconds", TP0) == 0


async def test_a_revoked_partition_loses_its_series() -> None:
    metrics, broker = Metrics(), Broker()
    monitor = LagMonitor(broker, metrics, clock=Clock())
    await monitor.assigned([TP0, TP1])
    monitor.revoked([TP1])
    assert series(metrics, "itep_consumer_lag") == {"0"}
    assert series(metrics, "itep_consumer_commit_age_seconds") == {"0"}
    await monitor.refresh()
    assert series(metrics, "itep_consumer_lag") == {"0"}, "a revoked partition came back"


async def test_a_stalled_partition_shows_its_commit_age_growing() -> None:
    metrics, broker, clock = Metrics(), Broker(), Clock()
    monitor = LagMonitor(broker, metrics, clock=clock)
    broker.committed_offsets[TP0] = 3
    broker.highwater[TP0] = 10
    await monitor.assigned([TP0])
    clock.now += 90
    await monitor.refresh()
    assert sample(metrics, "itep_consumer_lag", TP0) == 7
    assert sample(metrics, "itep_consumer_commit_age_seconds", TP0) == 90
    broker.committed_offsets[TP0] = 10
    clock.now += 5
    await monitor.refresh()
    assert sample(metrics, "itep_consumer_lag", TP0) == 0
    assert sample(metrics, "itep_consumer_commit_age_seconds", TP0) == 0


async def test_a_failed_read_keeps_the_last_values_and_says_so() -> None:
    metrics, broker = Metrics(), Broker()
    monitor = LagMonitor(broker, metrics, clock=Clock())
    broker.highwater[TP0] = 4
    await monitor.assigned([TP0])
    broker.failing = True
    broker.highwater[TP0] = 9
    with capture_logs() as logs:
        await monitor.refresh()
    assert sample(metrics, "itep_consumer_lag", TP0) == 4
    assert [e["event"] for e in logs] == ["lag_unknown"]
    assert logs[0]["error"] == "KafkaTimeoutError"


async def test_a_read_that_hangs_is_given_up_at_the_timeout() -> None:
    class Hanging(Broker):
        async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
            await asyncio.Event().wait()
            raise AssertionError("never answers")

    metrics = Metrics()
    monitor = LagMonitor(Hanging(), metrics, timeout=0.05, clock=Clock())
    with capture_logs() as logs:
        async with asyncio.timeout(5):
            await monitor.assigned([TP0])
    assert [e["event"] for e in logs] == ["lag_unknown"]
    assert sample(metrics, "itep_consumer_lag", TP0) is None


async def test_the_routine_refreshes_until_stopped_and_stopping_removes_every_series() -> None:
    metrics, broker = Metrics(), Broker()
    monitor = LagMonitor(broker, metrics, interval=0.01, clock=Clock())
    await monitor.assigned([TP0])
    monitor.start()
    broker.highwater[TP0] = 6
    broker.answered.clear()
    async with asyncio.timeout(5):
        await broker.answered.wait()
        await asyncio.sleep(0)
    assert sample(metrics, "itep_consumer_lag", TP0) == 6
    await monitor.stop()
    assert series(metrics, "itep_consumer_lag") == set()
    assert series(metrics, "itep_consumer_commit_age_seconds") == set()


@pytest.mark.parametrize("result", ["delivered", "retry", "failed"])
def test_endpoint_attempts_are_counted_per_tracking_code(result: str) -> None:
    metrics = Metrics()
    metrics.endpoint_attempt("T1", result).inc()
    metrics.endpoint_attempt("T1", result).inc()
    labels = {"tracking_code": "T1", "result": result}
    assert metrics.registry.get_sample_value("itep_endpoint_attempts_total", labels) == 2


async def test_a_crash_of_the_routine_is_logged_and_does_not_break_the_stop() -> None:
    class Broken(Broker):
        async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
            raise ValueError("a bug")

    monitor = LagMonitor(Broken(), Metrics(), interval=0.01, clock=Clock())
    monitor._partitions.add(TP0)
    with capture_logs() as logs:
        monitor.start()
        async with asyncio.timeout(5):
            while not logs:
                await asyncio.sleep(0.01)
        await monitor.stop()
    assert [e["event"] for e in logs] == ["lag_routine_crashed"]


def test_a_first_commit_where_the_group_started_does_not_restart_the_age() -> None:
    """Committing offset 0 of a partition that starts at 0 moves nothing: a stuck first
    record's age keeps growing across that commit."""
    ages: CommitAges[str] = CommitAges()
    before = PartitionOffsets(committed=None, earliest=0, highwater=1)
    after = PartitionOffsets(committed=0, earliest=0, highwater=1)
    assert position_of(before) == position_of(after) == 0
    ages.observe("p", position_of(before), lag_of(before), now=0.0)
    assert ages.observe("p", position_of(after), lag_of(after), now=5.0) == 5.0
