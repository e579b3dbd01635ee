"""The consumer loop's bookkeeping, with in-memory fakes instead of Kafka and HTTP."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from structlog.testing import capture_logs

from consumer.delivery.breaker import BreakerPolicy
from consumer.delivery.deliverer import Deliverer, Source, WaitingTests
from consumer.delivery.endpoints import EndpointGate
from consumer.delivery.retry_policy import AttemptResult
from consumer.delivery.webhook import WebhookRequest
from consumer.handler import EventHandler
from consumer.lag import LagMonitor
from consumer.metrics import Metrics
from consumer.outcomes import OutcomeRecord
from consumer.pipeline import FULL_WAIT, KEEP_ALIVE_POLL, POLL_BATCH, Pipeline, event_window
from consumer.reporter import OutcomeReporter
from consumer.settings import Settings
from consumer.tracking_codes import TrackingCode
from tests.factories import event_dict
from tests.fakes import FakePublisher, FakeSender, MemorySchedule

TP = TopicPartition("exam-events", 0)


@dataclass(frozen=True)
class Record:
    offset: int
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()
        self.polls: list[tuple[set[TopicPartition], int]] = []  # paused partitions, max_records

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.polls.append((set(self.paused), max_records))
        return {}

    async def committed(self, tp: TopicPartition) -> int | None:
        return max((c[tp] for c in self.commits if tp in c), default=None)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Store:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get(self, code: str) -> TrackingCode | None:
        if self.fail:
            raise RuntimeError("a bug in the lookup")
        return TrackingCode(code=code, endpoint_url="https://hooks.example.edu/x")


class Sender(FakeSender):
    pass


class Publisher(FakePublisher):
    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        raise AssertionError("no event here is invalid")


def make_pipeline(
    store: Store,
    retry_schedule: tuple[float, ...] = (),
    schedule: MemorySchedule | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Pipeline, Sender, Publisher]:
    sender, publisher = Sender(), Publisher()
    metrics = Metrics()
    schedule = schedule or MemorySchedule()
    waiting = WaitingTests()
    gate = EndpointGate(100, BreakerPolicy(), clock=time.monotonic)
    reporter = OutcomeReporter(publisher, metrics)
    deliverer = Deliverer(
        sender=sender,
        schedule=schedule,
        gate=gate,
        reporter=reporter,
        metrics=metrics,
        waiting=waiting,
        retry_schedule=retry_schedule,
    )
    handler = EventHandler(store=store, deliverer=deliverer, reporter=reporter, metrics=metrics)
    pipeline = Pipeline(
        Settings.from_env(env or {}),
        FakeConsumer(),  # type: ignore[arg-type]
        handler,
        metrics,
        schedule=schedule,
        waiting=waiting,
    )
    pipeline.offsets.assign([TP])
    waiting.load(TP.topic, TP.partition, set())
    return pipeline, sender, publisher


def schedule_of(pipeline: Pipeline) -> MemorySchedule:
    schedule = pipeline.schedule
    assert isinstance(schedule, MemorySchedule)
    return schedule


def record(offset: int, **overrides: Any) -> Record:
    doc = event_dict(**overrides)
    return Record(offset, str(doc["test_id"]).encode(), orjson.dumps(doc))


async def test_offsets_advance_past_events_that_need_no_webhook() -> None:
    """A non-trigger finishes at once, a trigger once its outcome is published."""
    pipeline, sender, publisher = make_pipeline(Store())
    pipeline._accept(TP, record(0, test_id="A", status="Review"))
    pipeline._accept(TP, record(1, test_id="B"))
    await wait_until_finished(pipeline, 2)
    assert pipeline.offsets.to_commit() == {TP: 2}
    assert [o.test_id for o in publisher.outcomes] == ["B"]
    assert len(sender.sent) == 1


async def test_a_bug_while_handling_is_logged_reported_failed_and_passed() -> None:
    """A bug while handling an event is logged with its traceback and reported as a failed
    outcome (internal_error); the partition carries on and its offset moves past it."""
    pipeline, _, publisher = make_pipeline(Store(fail=True))
    with capture_logs() as logs:
        pipeline._accept(TP, record(0, test_id="A", status="Ready", previous_status=None))
        pipeline._accept(TP, record(1, test_id="B"))
        pipeline._accept(TP, record(2, test_id="B", status="Invalidated"))
        await wait_until_finished(pipeline, 3)
    crashes = [e for e in logs if e["event"] == "event_handling_crashed"]
    assert len(crashes) == 2
    assert all(e["log_level"] == "error" and e["exc_info"] for e in crashes)
    assert [(o.test_id, o.outcome.value, o.reason) for o in publisher.outcomes] == [
        ("B", "failed", "internal_error"),
        ("B", "failed", "internal_error"),
    ]
    assert pipeline.offsets.to_commit() == {TP: 3}


async def test_a_retriable_failure_goes_to_the_schedule_and_finishes_its_offset() -> None:
    """A 503 puts the delivery on the schedule with its due time; nothing waits in process,
    so the event's offset can be committed at once."""
    pipeline, sender, publisher = make_pipeline(Store(), retry_schedule=(3600.0,))
    sender.status = 503
    pipeline._accept(TP, record(0, test_id="A"))
    await wait_until_finished(pipeline, 1)
    assert not pipeline._runners
    [row] = schedule_of(pipeline).pending()
    assert (row.new.test_id, row.step, row.attempts, row.reason) == ("A", 1, 1, "http_503")
    [outcome] = publisher.outcomes
    assert outcome.outcome.value == "retry_scheduled"
    assert outcome.next_attempt_at is not None
    assert pipeline.waiting.has(Source(TP.topic, TP.partition, 0), "A")


async def test_a_later_event_of_a_waiting_test_joins_the_schedule_unsent() -> None:
    """While an earlier delivery of the test waits, a later event is not attempted: it
    joins the schedule behind it."""
    pipeline, sender, publisher = make_pipeline(Store(), retry_schedule=(3600.0,))
    sender.status = 503
    pipeline._accept(TP, record(0, test_id="A"))
    pipeline._accept(TP, record(1, test_id="A", status="Invalidated"))
    pipeline._accept(TP, record(2, test_id="B", status="Invalidated"))
    await wait_until_finished(pipeline, 3)
    assert len(sender.sent) == 2, "A's second event is not sent; B's is"
    rows = schedule_of(pipeline).pending()
    assert [(r.new.test_id, r.reason) for r in rows] == [
        ("A", "http_503"),
        ("A", "earlier_delivery_pending"),
        ("B", "http_503"),
    ]
    assert [o.reason for o in publisher.outcomes if o.test_id == "A"] == [
        "http_503",
        "earlier_delivery_pending",
    ]


async def test_an_event_consumed_again_whose_delivery_is_scheduled_is_not_redone() -> None:
    """After a crash before the commit, the next owner finds the event's delivery in the
    schedule and finishes the event without a second attempt or outcome."""
    pipeline, sender, _ = make_pipeline(Store(), retry_schedule=(3600.0,))
    sender.status = 503
    first = record(0, test_id="A")
    pipeline._accept(TP, first)
    await wait_until_finished(pipeline, 1)
    nothing_committed, fresh_sender, fresh_publisher = make_pipeline(
        Store(), retry_schedule=(3600.0,), schedule=schedule_of(pipeline)
    )
    await nothing_committed.on_assigned([TP])
    other = record(1, test_id="B")
    nothing_committed._accept(TP, first)
    nothing_committed._accept(TP, other)
    await wait_until_finished(nothing_committed, 2)
    assert [r.webhook_id for r in fresh_sender.sent] == [orjson.loads(other.value)["event_id"]]
    assert [o.test_id for o in fresh_publisher.outcomes] == ["B"]


async def test_events_fetched_before_the_waiting_tests_are_loaded_wait_for_them() -> None:
    """A record that arrives while its partition's assignment is still loading is handled
    only once the waiting tests are known, so it cannot overtake an earlier delivery."""
    pipeline, sender, _ = make_pipeline(Store(), retry_schedule=(3600.0,))
    sender.status = 503
    pipeline._accept(TP, record(0, test_id="A"))
    await wait_until_finished(pipeline, 1)
    fresh, fresh_sender, fresh_publisher = make_pipeline(
        Store(), retry_schedule=(3600.0,), schedule=schedule_of(pipeline)
    )
    fresh.waiting.drop(TP.topic, TP.partition)  # assigned, not loaded yet
    fresh.offsets.add(TP, 0)
    fresh.offsets.finish(TP, 0)
    fresh._accept(TP, record(1, test_id="A", status="Invalidated"))
    await asyncio.sleep(0.05)
    assert not fresh_publisher.outcomes
    await fresh.on_assigned([TP])
    await wait_until_finished(fresh, 2)
    assert fresh_sender.sent == []
    assert [o.reason for o in fresh_publisher.outcomes] == ["earlier_delivery_pending"]


async def test_waiting_tests_are_loaded_when_a_partition_is_assigned() -> None:
    """A delivery left in the schedule by an earlier owner holds the test's next event."""
    pipeline, sender, _ = make_pipeline(Store(), retry_schedule=(3600.0,))
    sender.status = 503
    pipeline._accept(TP, record(0, test_id="A"))
    await wait_until_finished(pipeline, 1)
    await pipeline.on_revoked([TP])
    assert not pipeline.waiting.loaded(TP.topic, TP.partition)
    await pipeline.on_assigned([TP])
    assert pipeline.waiting.has(Source(TP.topic, TP.partition, 0), "A")


async def wait_until_finished(pipeline: Pipeline, offset: int) -> None:
    async with asyncio.timeout(5):
        while pipeline.offsets.to_commit().get(TP) != offset:
            await asyncio.sleep(0.01)


def consumer_of(pipeline: Pipeline) -> FakeConsumer:
    consumer = pipeline.consumer
    assert isinstance(consumer, FakeConsumer)
    return consumer


def test_a_slow_record_pauses_only_its_partition_and_only_at_the_uncommitted_bound() -> None:
    """Records finished behind an unfinished one are not in flight; their partition pauses
    when MAX_UNCOMMITTED_PER_PARTITION wait to be committed, and resumes at 80% of it."""
    pipeline, _, _ = make_pipeline(
        Store(), env={"MAX_IN_FLIGHT": "3", "MAX_UNCOMMITTED_PER_PARTITION": "5"}
    )
    for offset in range(4):
        pipeline.offsets.add(TP, offset)
    for offset in (1, 2, 3):
        pipeline.offsets.finish(TP, offset)
    pipeline._apply_backpressure()
    assert consumer_of(pipeline).paused == set()
    pipeline.offsets.add(TP, 4)
    pipeline.offsets.finish(TP, 4)
    pipeline._apply_backpressure()
    assert consumer_of(pipeline).paused == {TP}
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_held") == 1
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_paused") == 0
    pipeline.offsets.finish(TP, 0)
    pipeline._apply_backpressure()
    assert consumer_of(pipeline).paused == set()
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_held") == 0


def test_the_window_holds_max_in_flight_events_and_half_as_many_again() -> None:
    """The attempts in flight are bounded by the sender at MAX_IN_FLIGHT; the margin holds
    the events parsed before their attempt and those whose outcome is being acknowledged."""
    assert [event_window(n) for n in (1, 2, 3, 20, 1000)] == [1, 3, 4, 30, 1500]
    pipeline, _, _ = make_pipeline(Store(), env={"MAX_IN_FLIGHT": "20"})
    assert pipeline.window == 30


def test_a_full_window_stops_polling_until_a_tenth_of_it_is_free() -> None:
    """At the window's size in unfinished records (30 for MAX_IN_FLIGHT 20) the loop takes
    no more, without pausing any partition in aiokafka (which would drop what it has
    fetched); it polls again, for as many records as there is room, once a tenth of the
    window is free."""
    pipeline, _, _ = make_pipeline(Store(), env={"MAX_IN_FLIGHT": "20"})
    for offset in range(29):
        pipeline.offsets.add(TP, offset)
    pipeline._apply_backpressure()
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_paused") == 0
    assert pipeline._room() == 1
    pipeline.offsets.add(TP, 29)
    pipeline._apply_backpressure()
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_paused") == 1
    assert pipeline._room() == 0
    for offset in (0, 1):
        pipeline.offsets.finish(TP, offset)
    assert pipeline._room() == 0
    pipeline.offsets.finish(TP, 2)
    assert pipeline._room() == 3
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_paused") == 0
    assert consumer_of(pipeline).paused == set()


def test_reopening_the_window_leaves_a_held_partition_paused() -> None:
    """The window reopens, but a partition whose uncommitted records are still at the
    bound stays paused."""
    pipeline, _, _ = make_pipeline(
        Store(), env={"MAX_IN_FLIGHT": "2", "MAX_UNCOMMITTED_PER_PARTITION": "4"}
    )
    for offset in range(4):
        pipeline.offsets.add(TP, offset)
    pipeline._apply_backpressure()
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_paused") == 1
    for offset in (1, 2, 3):
        pipeline.offsets.finish(TP, offset)
    pipeline._apply_backpressure()
    assert pipeline._room() == 2
    assert pipeline.metrics.registry.get_sample_value("itep_partitions_paused") == 0
    assert consumer_of(pipeline).paused == {TP}


async def test_a_window_full_for_long_polls_once_with_every_partition_paused() -> None:
    """So that the group does not take a consumer waiting out an outage for dead; the
    partitions are resumed after that poll."""
    pipeline, _, _ = make_pipeline(Store(), env={"MAX_IN_FLIGHT": "2"})
    for offset in range(pipeline.window):
        pipeline.offsets.add(TP, offset)
    pipeline._apply_backpressure()
    stopped = asyncio.get_running_loop().create_future()
    assert await pipeline._wait_for_room(stopped) == {}
    assert consumer_of(pipeline).polls == []
    pipeline._last_keep_alive -= KEEP_ALIVE_POLL
    await pipeline._wait_for_room(stopped)
    assert consumer_of(pipeline).polls == [({TP}, 1)]
    assert consumer_of(pipeline).paused == set()


def test_the_in_flight_gauge_reads_the_window_when_scraped() -> None:
    pipeline, _, _ = make_pipeline(Store())
    for offset in range(5):
        pipeline.offsets.add(TP, offset)
    pipeline.offsets.finish(TP, 3)
    registry = pipeline.metrics.registry
    assert registry.get_sample_value("itep_events_in_flight") == 4
    pipeline.offsets.finish(TP, 0)
    assert registry.get_sample_value("itep_events_in_flight") == 3


async def test_a_full_window_wakes_as_soon_as_a_record_finishes() -> None:
    """Not at the end of ``FULL_WAIT``: with slow receivers every 100 ms spent asleep
    with room in the window is throughput lost."""
    pipeline, _, _ = make_pipeline(Store(), env={"MAX_IN_FLIGHT": "2"})
    for offset in range(pipeline.window):
        pipeline.offsets.add(TP, offset)
    pipeline._apply_backpressure()
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    loop.call_later(0.01, pipeline._finish, TP, 0)
    started = loop.time()
    await pipeline._wait_for_room(stopped)
    assert loop.time() - started < FULL_WAIT / 2


@pytest.mark.parametrize(("max_in_flight", "asked"), [("1000", POLL_BATCH), ("2", 3)])
async def test_a_poll_asks_for_at_most_a_poll_batch_or_the_room_in_the_window(
    max_in_flight: str, asked: int
) -> None:
    """A poll's records are all stepped in one turn of the loop: a large window is filled
    a batch at a time, so the responses of the attempts in flight are read between."""
    pipeline, _, _ = make_pipeline(Store(), env={"MAX_IN_FLIGHT": max_in_flight})
    stop = asyncio.Event()
    running = asyncio.create_task(pipeline.run(stop))
    while not consumer_of(pipeline).polls:
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(running, 2)
    assert {max_records for _, max_records in consumer_of(pipeline).polls} == {asked}


class SlowCommitConsumer(FakeConsumer):
    """A consumer whose commit takes until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.committing = asyncio.Event()
        self.release = asyncio.Event()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committing.set()
        await self.release.wait()
        await super().commit(offsets)


async def test_the_loop_goes_on_polling_while_the_timers_commit_waits_for_the_broker() -> None:
    pipeline, _, _ = make_pipeline(Store(), env={"COMMIT_INTERVAL": "10ms"})
    consumer = SlowCommitConsumer()
    pipeline.consumer = consumer  # type: ignore[assignment]
    pipeline.offsets.add(TP, 0)
    pipeline._finish(TP, 0)
    stop = asyncio.Event()
    running = asyncio.create_task(pipeline.run(stop))
    await asyncio.wait_for(consumer.committing.wait(), 2)
    polls = len(consumer.polls)
    await asyncio.sleep(0.3)
    assert len(consumer.polls) > polls, "no poll while the commit was in flight"
    assert consumer.commits == []
    consumer.release.set()
    stop.set()
    await asyncio.wait_for(running, 2)
    assert consumer.commits[0] == {TP: 1}


class LagSource:
    """The broker's offsets for the lag monitor: nothing committed, ten records in TP."""

    async def committed(self, _tp: TopicPartition) -> int | None:
        return None

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 10)


async def test_lag_is_exported_from_the_assignment_and_removed_at_the_revocation() -> None:
    """Before anything is fetched, the assigned partition shows its lag; revoked, none."""
    pipeline, _, _ = make_pipeline(Store())
    pipeline.lag = LagMonitor(LagSource(), pipeline.metrics)
    labels = {"topic": TP.topic, "partition": "0"}
    await pipeline.on_assigned([TP])
    assert pipeline.metrics.registry.get_sample_value("itep_consumer_lag", labels) == 10
    await pipeline.on_revoked([TP])
    assert pipeline.metrics.registry.get_sample_value("itep_consumer_lag", labels) is None


class RefusingPublisher:
    """The broker refuses every record about test BIG as too large."""

    def __init__(self) -> None:
        self.outcomes: list[OutcomeRecord] = []

    async def publish(self, record: OutcomeRecord) -> None:
        if record.test_id == "BIG":
            raise MessageSizeTooLargeError("too large")
        self.outcomes.append(record)

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        raise MessageSizeTooLargeError("too large")


async def test_a_failing_crash_report_still_moves_the_partition_on() -> None:
    """When even the failed outcome cannot be published, the failure is logged and the
    test's next events still run: no queue is left without its runner."""
    pipeline, _, _ = make_pipeline(Store())
    pipeline.handler.reporter.publisher = RefusingPublisher()
    with capture_logs() as logs:
        pipeline._accept(TP, record(0, test_id="BIG"))
        pipeline._accept(TP, record(1, test_id="BIG", status="Invalidated"))
        await wait_until_finished(pipeline, 2)
    assert [e["event"] for e in logs].count("crash_report_failed") == 2
    assert not pipeline._runners
    assert not pipeline._queues


async def test_a_rejection_that_cannot_be_published_still_finishes_its_offset() -> None:
    pipeline, _, _ = make_pipeline(Store())
    pipeline.handler.reporter.publisher = RefusingPublisher()
    bad = event_dict(test_id="BIG", status="Nope")
    with capture_logs() as logs:
        pipeline._accept(TP, Record(0, b"BIG", orjson.dumps(bad)))
        await wait_until_finished(pipeline, 1)
    assert "dead_letter_failed" in [e["event"] for e in logs]


class SlowSender(FakeSender):
    async def send(self, request: WebhookRequest) -> AttemptResult:
        await asyncio.sleep(0.2)
        return await super().send(request)


async def test_winding_down_finishes_queued_events_too_so_nothing_is_redone() -> None:
    """On a stop, the attempt in hand and the events queued behind it are finished within
    the bound: the commit covers every record fetched, so the next owner sends none again."""
    pipeline, _, publisher = make_pipeline(Store())
    pipeline.handler.deliverer.sender = SlowSender()
    pipeline.settings = replace(pipeline.settings, drain_timeout=3.0)
    pipeline._accept(TP, record(0, test_id="A"))
    pipeline._accept(TP, record(1, test_id="A", status="Invalidated"))
    pipeline._accept(TP, record(2, test_id="B"))
    await asyncio.sleep(0.05)  # sending the first of each test
    async with asyncio.timeout(1.5):
        assert await pipeline.wind_down(None)
    assert not pipeline._runners
    assert [o.outcome.value for o in publisher.outcomes] == ["delivered"] * 3
    assert pipeline.offsets.to_commit() == {TP: 3}


async def test_winding_down_cancels_what_is_left_at_the_bound() -> None:
    """Events not finished within ``DRAIN_TIMEOUT`` are cancelled and stay uncommitted: the
    commit stops below the first of them."""
    pipeline, _, publisher = make_pipeline(Store())
    pipeline.handler.deliverer.sender = SlowSender()
    pipeline.settings = replace(pipeline.settings, drain_timeout=0.3)
    for offset in range(3):  # one test: 0.2 s each, one after the other
        pipeline._accept(TP, record(offset, test_id="A", status="Invalidated"))
    async with asyncio.timeout(1.5):
        assert not await pipeline.wind_down(None)
    assert not pipeline._runners
    assert not pipeline._queues
    assert [o.outcome.value for o in publisher.outcomes] == ["delivered"]
    assert pipeline.offsets.to_commit() == {TP: 1}


async def test_a_revoked_then_reassigned_partition_starts_clean() -> None:
    """Revoking cancels the partition's events not finished within the bound; once assigned
    again, the events fetched anew are handled in order."""
    pipeline, sender, publisher = make_pipeline(Store())
    pipeline.handler.deliverer.sender = SlowSender()
    pipeline.settings = replace(pipeline.settings, drain_timeout=0.05)
    first, second = record(0, test_id="A"), record(1, test_id="A", status="Invalidated")
    pipeline._accept(TP, first)
    pipeline._accept(TP, second)
    await asyncio.sleep(0.01)
    await pipeline.on_revoked([TP])
    assert not pipeline._runners
    assert not pipeline._queues
    assert not publisher.outcomes, "the attempt in hand was cancelled at the bound"
    await pipeline.on_assigned([TP])
    pipeline.handler.deliverer.sender = sender
    pipeline._accept(TP, first)
    pipeline._accept(TP, second)
    await wait_until_finished(pipeline, 2)
    assert [o.outcome.value for o in publisher.outcomes] == ["delivered", "delivered"]
    expected = [orjson.loads(r.value or b"")["event_id"] for r in (first, second)]
    assert [r.webhook_id for r in sender.sent] == expected


async def test_a_runner_cancelled_before_its_first_step_is_forgotten_with_its_queue() -> None:
    pipeline, sender, _ = make_pipeline(Store())
    pipeline.offsets.add(TP, 0)
    pipeline._dispatch(TP, record(0))
    assert len(pipeline._runners) == 1
    await pipeline._cancel(lambda tp: True)
    assert pipeline._runners == {}
    assert pipeline._queues == {}
    assert sender.sent == [], "the event was never handled"


async def test_a_runner_that_fails_outside_the_handler_logs_it_and_is_forgotten() -> None:
    pipeline, _, _ = make_pipeline(Store())

    def broken_finish(tp: TopicPartition, offset: int) -> None:
        raise RuntimeError("a bug in the bookkeeping")

    pipeline._finish = broken_finish  # type: ignore[method-assign]
    pipeline.offsets.add(TP, 0)
    with capture_logs() as logs:
        pipeline._dispatch(TP, record(0))
        for _ in range(50):
            await asyncio.sleep(0)
            if not pipeline._runners:
                break
    assert pipeline._runners == {}
    assert "runner_crashed" in [entry["event"] for entry in logs]
