"""The delivery logic over the whole schedule, with an injected clock and in-memory fakes.

A 28-hour schedule runs in milliseconds: the clock jumps to each due time, the fake schedule
hands out what is due, and the deliverer decides. Postgres, HTTP and Kafka versions of the
same paths are tested in tests/integration/.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import orjson
from structlog.testing import capture_logs

from consumer.delivery.breaker import BreakerPolicy
from consumer.delivery.deliverer import Deliverer, Delivery, Source, WaitingTests
from consumer.delivery.endpoints import EndpointGate, Hold
from consumer.events import parse_event
from consumer.metrics import Metrics
from consumer.reporter import OutcomeReporter
from consumer.settings import parse_schedule
from consumer.tracking_codes import TrackingCode
from tests.factories import event_dict
from tests.fakes import FakePublisher, FakeSender, MemorySchedule

CONTRACT_SCHEDULE = parse_schedule("5s,5m,30m,2h,5h,10h,10h")
SOURCE = Source("exam-events", 0, 0)
CODE = TrackingCode(code="ACME", endpoint_url="https://hooks.example.edu/itep")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def make(
    schedule: tuple[float, ...], sender: FakeSender, policy: BreakerPolicy | None = None
) -> tuple[Deliverer, MemorySchedule, FakePublisher, Clock]:
    clock = Clock()
    memory = MemorySchedule()
    publisher = FakePublisher()
    metrics = Metrics()
    waiting = WaitingTests()
    waiting.load(SOURCE.topic, SOURCE.partition, set())
    deliverer = Deliverer(
        sender=sender,
        schedule=memory,
        gate=EndpointGate(100, policy or BreakerPolicy(), clock=clock),
        reporter=OutcomeReporter(publisher, metrics),
        metrics=metrics,
        waiting=waiting,
        retry_schedule=schedule,
        clock=clock,
        rng=random.Random(7),
    )
    return deliverer, memory, publisher, clock


def delivery(**overrides: object) -> Delivery:
    raw = orjson.dumps(event_dict(tracking_code="ACME", **overrides))
    return Delivery(parse_event(raw), raw, "completed", SOURCE)


async def run_schedule(deliverer: Deliverer, memory: MemorySchedule, clock: Clock) -> int:
    """Jump the clock from due time to due time, attempting what is due; return the jumps."""
    jumps = 0
    while (due := memory.next_due()) is not None:
        clock.now = max(clock.now, due.timestamp())
        for row in memory.claim(datetime.fromtimestamp(clock.now, UTC)):
            event = parse_event(row.event)
            await deliverer.deliver(
                Delivery(
                    event,
                    row.event,
                    row.trigger,
                    SOURCE,
                    row_id=row.id,
                    attempts=row.attempts,
                    step=row.step,
                ),
                CODE,
            )
        jumps += 1
        assert jumps < 100, "the schedule never ends"
    return jumps


async def test_a_failing_endpoint_is_tried_on_every_step_of_a_28_hour_schedule() -> None:
    """Eight attempts (the first and seven retries), each gap within +-20% of its step;
    then failed / retries_exhausted, and the delivery kept as dead."""
    sender = FakeSender(status=503)
    deliverer, memory, publisher, clock = make(CONTRACT_SCHEDULE, sender)
    started = clock.now
    await deliverer.deliver(delivery(), CODE)
    await run_schedule(deliverer, memory, clock)
    assert len(sender.sent) == 8
    times = [request.timestamp for request in sender.sent]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, step in zip(gaps, CONTRACT_SCHEDULE, strict=True):
        assert step * 0.8 - 1 <= gap <= step * 1.2 + 1
    assert 0.8 * sum(CONTRACT_SCHEDULE) <= clock.now - started <= 1.2 * sum(CONTRACT_SCHEDULE)
    outcomes = [(o.outcome.value, o.reason, o.attempt) for o in publisher.outcomes]
    assert outcomes[:7] == [("retry_scheduled", "http_503", n) for n in range(1, 8)]
    assert outcomes[7] == ("failed", "retries_exhausted", 8)
    [dead] = memory.dead()
    assert (dead.attempts, dead.reason) == (8, "retries_exhausted")
    assert not memory.pending()


async def test_no_attempt_is_made_before_its_announced_time() -> None:
    """Every retry goes out at or after the next_attempt_at its retry_scheduled announced."""
    sender = FakeSender(status=503)
    deliverer, memory, publisher, clock = make(CONTRACT_SCHEDULE, sender)
    await deliverer.deliver(delivery(), CODE)
    await run_schedule(deliverer, memory, clock)
    announced = [o.next_attempt_at for o in publisher.outcomes if o.next_attempt_at]
    for at, request in zip(announced, sender.sent[1:], strict=True):
        due = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        assert request.timestamp >= int(due) - 1


async def test_recovery_mid_schedule_delivers_on_the_next_step() -> None:
    sender = FakeSender(statuses=[503, 502, 500, 200])
    deliverer, memory, publisher, clock = make(CONTRACT_SCHEDULE, sender)
    await deliverer.deliver(delivery(), CODE)
    await run_schedule(deliverer, memory, clock)
    assert [o.outcome.value for o in publisher.outcomes] == [
        "retry_scheduled",
        "retry_scheduled",
        "retry_scheduled",
        "delivered",
    ]
    assert publisher.outcomes[-1].attempt == 4
    assert not memory.rows, "a delivered row is deleted"


async def test_the_same_webhook_id_and_a_fresh_timestamp_on_every_attempt() -> None:
    sender = FakeSender(statuses=[503, 200])
    deliverer, memory, _, clock = make((60.0,), sender)
    first = delivery()
    await deliverer.deliver(first, CODE)
    await run_schedule(deliverer, memory, clock)
    ids = {request.webhook_id for request in sender.sent}
    assert ids == {first.event.event_id}
    assert sender.sent[1].timestamp - sender.sent[0].timestamp >= 48


async def test_a_permanent_failure_is_final_at_once_and_kept_dead() -> None:
    sender = FakeSender(status=404)
    deliverer, memory, publisher, _ = make(CONTRACT_SCHEDULE, sender)
    await deliverer.deliver(delivery(), CODE)
    assert [(o.outcome.value, o.reason) for o in publisher.outcomes] == [("failed", "http_404")]
    [dead] = memory.dead()
    assert dead.reason == "http_404"


async def test_an_empty_schedule_fails_the_first_retriable_failure() -> None:
    sender = FakeSender(status=503)
    deliverer, memory, publisher, _ = make((), sender)
    await deliverer.deliver(delivery(), CODE)
    assert [(o.outcome.value, o.reason) for o in publisher.outcomes] == [
        ("failed", "retries_exhausted")
    ]
    assert len(memory.dead()) == 1


async def test_an_open_breaker_spends_steps_without_attempts_but_always_tries_the_last() -> None:
    """With the breaker open for good, events use up the schedule with circuit_open and no
    POST, except the last step, which is a real attempt."""
    policy = BreakerPolicy(min_attempts=2, window=1e9, cooldown=1e9)
    sender = FakeSender(status=503)
    deliverer, memory, publisher, clock = make((1.0, 2.0, 4.0), sender, policy)
    for _ in range(2):  # two failures open the breaker
        await deliverer.deliver(delivery(), CODE)
    sender.sent.clear()
    publisher.outcomes.clear()
    await deliverer.deliver(late := delivery(test_id="LATE"), CODE)
    await run_schedule(deliverer, memory, clock)
    mine = [o for o in publisher.outcomes if o.event_id == late.event.event_id]
    assert [(o.outcome.value, o.reason) for o in mine] == [
        ("retry_scheduled", "circuit_open"),
        ("retry_scheduled", "circuit_open"),
        ("retry_scheduled", "circuit_open"),
        ("failed", "retries_exhausted"),
    ]
    assert [r.webhook_id for r in sender.sent].count(late.event.event_id) == 1
    assert mine[-1].attempt == 1


async def test_a_busy_endpoint_holds_without_using_a_step() -> None:
    sender = FakeSender()
    deliverer, memory, publisher, _ = make(CONTRACT_SCHEDULE, sender)
    deliverer.gate = EndpointGate(1, BreakerPolicy(), clock=deliverer.clock)
    deliverer.gate.admit(CODE)  # the code's one slot is taken
    await deliverer.deliver(delivery(), CODE)
    assert sender.sent == []
    [row] = memory.pending()
    assert (row.reason, row.step, row.attempts) == ("endpoint_busy", 0, 0)
    assert publisher.outcomes[0].reason == "endpoint_busy"
    assert deliverer.gate.in_flight("ACME") == 1


async def test_a_hold_is_logged_at_debug_and_counted_by_its_outcome() -> None:
    """A partner down for an hour must not log a line per event at info; the outcome
    counter by reason still counts every hold."""
    deliverer, _, _, _ = make(CONTRACT_SCHEDULE, FakeSender())
    paused = TrackingCode(code="ACME", endpoint_url=CODE.endpoint_url, paused=True)
    with capture_logs() as logs:
        await deliverer.deliver(delivery(), paused)
    assert [(line["event"], line["log_level"]) for line in logs] == [("webhook_held", "debug")]
    labels = {"outcome": "retry_scheduled", "reason": "tracking_code_paused"}
    registry = deliverer.metrics.registry
    assert registry.get_sample_value("itep_webhook_outcomes_total", labels) == 1


async def test_a_paused_code_holds_every_delivery() -> None:
    sender = FakeSender()
    deliverer, memory, publisher, _ = make(CONTRACT_SCHEDULE, sender)
    paused = TrackingCode(code="ACME", endpoint_url=CODE.endpoint_url, paused=True)
    await deliverer.deliver(delivery(), paused)
    assert sender.sent == []
    assert [r.reason for r in memory.pending()] == ["tracking_code_paused"]
    assert publisher.outcomes[0].next_attempt_at is not None


async def test_a_later_delivery_of_the_same_test_waits_behind_the_first() -> None:
    """Per test, only the first waiting delivery is due; the next follows it."""
    sender = FakeSender(statuses=[503])
    deliverer, memory, _, clock = make((10.0,), sender)
    first, second = delivery(test_id="T"), delivery(test_id="T", status="Invalidated")
    await deliverer.deliver(first, CODE)
    assert deliverer.waiting.has(SOURCE, "T")
    await deliverer.hold(second, CODE, "earlier_delivery_pending")
    clock.now += 0.5
    assert memory.claim(datetime.fromtimestamp(clock.now, UTC)) == [], "the head is not due"
    await run_schedule(deliverer, memory, clock)
    assert [r.webhook_id for r in sender.sent] == [
        first.event.event_id,
        first.event.event_id,
        second.event.event_id,
    ]
    assert not deliverer.waiting.has(SOURCE, "T")


def test_a_test_id_added_during_a_check_is_not_forgotten() -> None:
    """A row written while the schedule was being checked keeps its test id."""
    waiting = WaitingTests()
    waiting.load("t", 0, {"A"})
    since = waiting.mark()
    waiting.add(Source("t", 0, 5), "A")  # a new row, written after the check began
    waiting.discard("t", 0, "A", since=since)
    assert waiting.has(Source("t", 0, 0), "A")
    since = waiting.mark()
    waiting.discard("t", 0, "A", since=since)
    assert not waiting.has(Source("t", 0, 0), "A")


def test_prune_keeps_ids_added_after_the_snapshot() -> None:
    waiting = WaitingTests()
    waiting.load("t", 0, {"A", "B"})
    checked, since = waiting.snapshot()
    waiting.add(Source("t", 0, 1), "B")
    waiting.prune(still_waiting=set(), checked=checked, since=since)
    assert not waiting.has(Source("t", 0, 0), "A")
    assert waiting.has(Source("t", 0, 0), "B")


def test_a_partition_not_assigned_holds_nothing() -> None:
    waiting = WaitingTests()
    waiting.add(Source("t", 3, 0), "A")
    assert not waiting.has(Source("t", 3, 0), "A")
    assert len(waiting) == 0


async def open_breaker(deliverer: Deliverer) -> None:
    for _ in range(2):  # two failures open a breaker of min_attempts=2
        await deliverer.deliver(delivery(), CODE)


async def test_a_circuit_open_hold_comes_due_when_a_probe_may_go_out() -> None:
    """A step shorter than the breaker's cool-down would bring the delivery back only to be
    held again: it is due when the breaker lets a probe through, and never past the
    schedule's longest step."""
    policy = BreakerPolicy(min_attempts=2, window=1e9, cooldown=30.0)
    deliverer, memory, _, clock = make((5.0, 300.0), FakeSender(status=503), policy)
    await open_breaker(deliverer)
    await deliverer.deliver(delivery(test_id="LATE"), CODE)
    [row] = [r for r in memory.pending() if r.new.test_id == "LATE"]
    waited = row.due_at.timestamp() - clock.now
    assert (row.reason, row.step) == ("circuit_open", 1)
    assert 30.0 <= waited <= 36.0
    short = BreakerPolicy(min_attempts=2, window=1e9, cooldown=1000.0)
    deliverer, memory, _, clock = make((5.0, 300.0), FakeSender(status=503), short)
    await open_breaker(deliverer)
    await deliverer.deliver(delivery(test_id="LATE"), CODE)
    [row] = [r for r in memory.pending() if r.new.test_id == "LATE"]
    assert row.due_at.timestamp() - clock.now == 300.0


async def test_an_open_breaker_holds_a_delivery_even_while_the_share_is_full() -> None:
    """Behind a hanging endpoint the share stays full after the breaker opens. A delivery
    is then held once, for the breaker (a step used, due at the probe), not parked as busy
    only to be claimed and held again when the hanging attempts end. A delivery on its
    last step still waits for a slot."""
    policy = BreakerPolicy(min_attempts=2, window=1e9, cooldown=30.0)
    deliverer, memory, publisher, clock = make((5.0, 300.0), FakeSender(status=503), policy)
    deliverer.gate = EndpointGate(2, policy, clock=clock)
    await open_breaker(deliverer)
    for _ in range(2):  # last-step attempts go out while the breaker is open: share full
        deliverer.gate.admit(CODE, last_step=True)
    publisher.outcomes.clear()
    await deliverer.deliver(delivery(test_id="NEW"), CODE)
    rows = {r.new.test_id: r for r in memory.pending()}
    assert (rows["NEW"].reason, rows["NEW"].step) == ("circuit_open", 1)
    assert 30.0 <= rows["NEW"].due_at.timestamp() - clock.now <= 36.0
    assert [o.reason for o in publisher.outcomes] == ["circuit_open"]
    last = Delivery(delivery(test_id="LAST").event, b"{}", "completed", SOURCE, step=2)
    assert deliverer.gate.admit(CODE, last_step=True) == Hold("endpoint_busy")
    await deliverer.deliver(last, CODE)
    assert publisher.outcomes[-1].reason == "endpoint_busy"


async def test_a_delivery_claimed_while_the_probe_is_out_waits_unchanged() -> None:
    """While the half-open breaker's probe is out, a claimed delivery of the code is given
    back as it was: no outcome, no step used, no POST."""
    policy = BreakerPolicy(min_attempts=2, window=1e9, cooldown=30.0)
    sender = FakeSender(status=503)
    deliverer, memory, publisher, clock = make((5.0, 300.0), sender, policy)
    await open_breaker(deliverer)
    await deliverer.deliver(delivery(test_id="LATE"), CODE)
    clock.now += 40
    probe = deliverer.gate.admit(CODE)  # another delivery's probe goes out
    assert getattr(probe, "probe", False)
    sent, published = len(sender.sent), len(publisher.outcomes)
    due = memory.claim(datetime.fromtimestamp(clock.now, UTC))
    [claimed] = [r for r in due if r.test_id == "LATE"]
    await deliverer.deliver(
        Delivery(
            parse_event(claimed.event),
            claimed.event,
            claimed.trigger,
            SOURCE,
            row_id=claimed.id,
            attempts=claimed.attempts,
            step=claimed.step,
        ),
        CODE,
    )
    [row] = [r for r in memory.pending() if r.new.test_id == "LATE"]
    assert (row.step, row.locked) == (1, False)
    assert (len(sender.sent), len(publisher.outcomes)) == (sent, published)
