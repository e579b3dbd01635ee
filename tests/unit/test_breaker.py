"""When the per-endpoint breaker lets attempts through, opens, probes and closes again."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.delivery.breaker import (
    BUCKETS,
    Breaker,
    BreakerPolicy,
    BreakerState,
    Transition,
)

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
POLICY = BreakerPolicy(failure_ratio=0.7, min_attempts=10, window=60.0, cooldown=30.0)


def opened_at_zero(policy: BreakerPolicy = POLICY) -> Breaker:
    """A breaker that opened at t=0 after ``min_attempts`` failures."""
    breaker = Breaker(policy)
    for _ in range(policy.min_attempts):
        breaker.record(0.0, ok=False)
    assert breaker.state(0.0) is OPEN
    return breaker


def half_open_with_probe_out(now: float = 30.0) -> Breaker:
    """A breaker that opened at t=0 and let its probe through at ``now``."""
    breaker = opened_at_zero()
    assert breaker.allow(now)
    return breaker


# The policy


def test_default_policy_is_seventy_percent_of_ten_attempts_in_a_minute_then_thirty_seconds():
    assert BreakerPolicy() == BreakerPolicy(0.7, 10, 60.0, 30.0)


def test_policy_accepts_the_inclusive_bounds():
    """A ratio of 1 (open only when every attempt failed) and a single attempt are valid."""
    policy = BreakerPolicy(failure_ratio=1.0, min_attempts=1)
    assert (policy.failure_ratio, policy.min_attempts) == (1.0, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_ratio", 0.0),
        ("failure_ratio", -0.1),
        ("failure_ratio", 1.01),
        ("failure_ratio", math.nan),
        ("min_attempts", 0),
        ("min_attempts", -3),
        ("window", 0.0),
        ("window", -60.0),
        ("window", math.nan),
        ("cooldown", 0.0),
        ("cooldown", -1.0),
        ("cooldown", math.nan),
    ],
)
def test_policy_refuses_an_out_of_range_field_naming_it(field: str, value: float):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        BreakerPolicy(**{field: value})


# Closed: counting over the window


def test_new_breaker_is_closed_and_allows_attempts():
    breaker = Breaker(POLICY)
    assert breaker.state(0.0) is CLOSED
    assert breaker.allow(0.0)


def test_stays_closed_under_min_attempts_even_when_every_attempt_fails():
    breaker = Breaker(POLICY)
    results = [breaker.record(float(t), ok=False) for t in range(9)]
    assert results == [None] * 9
    assert breaker.state(9.0) is CLOSED
    assert breaker.allow(9.0)


def test_opens_when_the_failure_ratio_reaches_the_policy_ratio_exactly():
    """3 successes and 7 failures are 0.7 of 10 attempts: the 10th result opens it."""
    breaker = Breaker(POLICY)
    for t in range(3):
        assert breaker.record(float(t), ok=True) is None
    for t in range(3, 9):
        assert breaker.record(float(t), ok=False) is None
    assert breaker.record(9.0, ok=False) == Transition(CLOSED, OPEN, 9.0)
    assert breaker.state(9.0) is OPEN


def test_stays_closed_just_below_the_policy_ratio():
    """4 successes and 6 failures are 0.6 of 10 attempts."""
    breaker = Breaker(POLICY)
    for t in range(4):
        breaker.record(float(t), ok=True)
    results = [breaker.record(float(t), ok=False) for t in range(4, 10)]
    assert results == [None] * 6
    assert breaker.state(10.0) is CLOSED


def test_open_breaker_refuses_attempts():
    breaker = opened_at_zero()
    assert not breaker.allow(0.0)
    assert not breaker.allow(29.9)


def test_results_recorded_within_the_window_still_count():
    """9 failures at t=0 and one at t=57 (the 20th bucket of 3 s) are 10 in the window."""
    breaker = Breaker(POLICY)
    for _ in range(9):
        breaker.record(0.0, ok=False)
    assert breaker.record(57.0, ok=False) == Transition(CLOSED, OPEN, 57.0)


def test_results_older_than_the_window_no_longer_count():
    """9 failures at t=0 have left the window by t=60: one more failure is 1 attempt."""
    breaker = Breaker(POLICY)
    for _ in range(9):
        breaker.record(0.0, ok=False)
    assert breaker.record(60.0, ok=False) is None
    assert breaker.state(60.0) is CLOSED


def test_successes_that_left_the_window_no_longer_dilute_the_ratio():
    """Old successes drop out, so the failures after them reach the ratio on their own."""
    breaker = Breaker(POLICY)
    for _ in range(100):
        breaker.record(0.0, ok=True)
    for _ in range(9):
        assert breaker.record(30.0, ok=False) is None
    assert breaker.record(60.0, ok=False) == Transition(CLOSED, OPEN, 60.0)


# Open -> half-open -> closed or open


def test_reopens_at_is_the_end_of_the_cooldown():
    assert opened_at_zero().reopens_at() == 30.0


def test_reopens_at_is_none_while_closed():
    assert Breaker(POLICY).reopens_at() is None


def test_reopens_at_is_none_once_half_open():
    breaker = opened_at_zero()
    breaker.state(30.0)
    assert breaker.reopens_at() is None


def test_open_turns_half_open_when_the_cooldown_has_passed():
    breaker = opened_at_zero()
    assert breaker.state(29.999) is OPEN
    assert breaker.state(30.0) is HALF_OPEN


def test_half_open_allows_exactly_one_probe():
    breaker = opened_at_zero()
    assert [breaker.allow(30.0 + i) for i in range(5)] == [True, False, False, False, False]


def test_probing_is_true_only_while_a_probe_is_out():
    breaker = opened_at_zero()
    assert not breaker.probing
    breaker.allow(30.0)
    assert breaker.probing
    breaker.record(31.0, ok=True, probe=True)
    assert not breaker.probing


def test_probe_success_closes_the_breaker():
    breaker = half_open_with_probe_out()
    assert breaker.record(31.0, ok=True, probe=True) == Transition(HALF_OPEN, CLOSED, 31.0)
    assert breaker.state(31.0) is CLOSED
    assert breaker.allow(31.0)


def test_probe_success_empties_the_window():
    """The 10 failures of t=0 are still inside 60 s at t=32, yet no longer count."""
    breaker = half_open_with_probe_out()
    breaker.record(31.0, ok=True, probe=True)
    assert breaker.record(32.0, ok=False) is None
    assert breaker.state(32.0) is CLOSED


def test_probe_failure_reopens_with_a_fresh_cooldown():
    breaker = half_open_with_probe_out(now=35.0)
    assert breaker.record(40.0, ok=False, probe=True) == Transition(HALF_OPEN, OPEN, 40.0)
    assert breaker.reopens_at() == 70.0
    assert breaker.state(69.9) is OPEN
    assert not breaker.allow(69.9)
    assert breaker.state(70.0) is HALF_OPEN


def test_late_success_while_open_does_not_close_it():
    """The result of an attempt that started before the breaker opened is ignored."""
    breaker = opened_at_zero()
    assert breaker.record(5.0, ok=True) is None
    assert breaker.state(5.0) is OPEN


def test_late_failure_while_open_does_not_extend_the_cooldown():
    breaker = opened_at_zero()
    assert breaker.record(20.0, ok=False) is None
    assert breaker.reopens_at() == 30.0


def test_late_probe_flagged_result_while_open_is_ignored():
    breaker = opened_at_zero()
    assert breaker.record(5.0, ok=True, probe=True) is None
    assert breaker.state(5.0) is OPEN


@pytest.mark.parametrize("ok", [True, False])
def test_non_probe_result_in_half_open_is_ignored(ok: bool):
    breaker = half_open_with_probe_out()
    assert breaker.record(31.0, ok=ok) is None
    assert breaker.state(31.0) is HALF_OPEN
    assert breaker.probing


def test_probe_result_with_no_probe_out_is_ignored():
    """A probe that was abandoned and reports anyway does not decide."""
    breaker = half_open_with_probe_out()
    breaker.abandon_probe()
    assert breaker.record(31.0, ok=True, probe=True) is None
    assert breaker.state(31.0) is HALF_OPEN


def test_abandon_probe_lets_another_probe_through():
    breaker = half_open_with_probe_out()
    breaker.abandon_probe()
    assert not breaker.probing
    assert breaker.allow(31.0)
    assert not breaker.allow(31.0)


def test_abandon_probe_without_a_probe_out_changes_nothing():
    breaker = Breaker(POLICY)
    breaker.abandon_probe()
    assert breaker.state(0.0) is CLOSED
    assert not breaker.probing


# Reporting the change to half-open


def test_take_transition_reports_nothing_while_closed():
    breaker = Breaker(POLICY)
    breaker.record(0.0, ok=False)
    assert breaker.take_transition(0.0) is None


def test_take_transition_reports_nothing_before_the_cooldown_has_passed():
    assert opened_at_zero().take_transition(29.9) is None


def test_take_transition_reports_open_to_half_open_once_at_the_time_it_happened():
    breaker = opened_at_zero()
    assert breaker.take_transition(45.0) == Transition(OPEN, HALF_OPEN, 30.0)
    assert breaker.take_transition(46.0) is None
    assert breaker.take_transition(100.0) is None


def test_take_transition_reports_each_open_period_once():
    breaker = half_open_with_probe_out()
    breaker.take_transition(30.0)
    breaker.record(31.0, ok=False, probe=True)
    assert breaker.take_transition(60.0) is None
    assert breaker.take_transition(61.0) == Transition(OPEN, HALF_OPEN, 61.0)


# Time


def test_now_going_backwards_is_read_as_the_latest_seen():
    """After t=30 was seen, t=10 is still half-open, and a result at t=5 is stamped t=30."""
    breaker = opened_at_zero()
    assert breaker.state(30.0) is HALF_OPEN
    assert breaker.state(10.0) is HALF_OPEN
    assert breaker.allow(10.0)
    assert breaker.record(5.0, ok=True, probe=True) == Transition(HALF_OPEN, CLOSED, 30.0)


def test_results_recorded_with_an_earlier_now_count_in_the_latest_bucket():
    """9 failures at t=100 then one 'at t=0': the window holds 10, so it opens at t=100."""
    breaker = Breaker(POLICY)
    for _ in range(9):
        breaker.record(100.0, ok=False)
    assert breaker.record(0.0, ok=False) == Transition(CLOSED, OPEN, 100.0)


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_non_finite_now_is_refused(now: float):
    with pytest.raises(ValueError, match=r"^now must be"):
        Breaker(POLICY).allow(now)


# Memory


def test_memory_stays_bounded_at_thousands_of_records_a_second():
    """2 minutes at 1000 results/s, one in three a failure, hold at most BUCKETS buckets."""
    breaker = Breaker(POLICY)
    for i in range(120_000):
        assert breaker.record(i / 1000, ok=i % 3 != 0) is None
        assert breaker.bucket_count <= BUCKETS
    assert breaker.state(120.0) is CLOSED


# Properties

# With a 60 s window, buckets are 3 s wide. Results recorded at whole multiples of 3 s fall
# on bucket boundaries, so the breaker's window is exactly the results of the last 60 s,
# (now - 60, now], and a plain list of every result is a faithful model of it.
WIDTH = POLICY.window / BUCKETS

policies = st.builds(
    BreakerPolicy,
    failure_ratio=st.integers(1, 20).map(lambda k: k / 20),
    min_attempts=st.integers(1, 15),
    window=st.just(POLICY.window),
    cooldown=st.just(POLICY.cooldown),
)


@st.composite
def runs(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """(buckets since the previous result, ok) pairs; each run has its own failure share."""
    failure_share = draw(st.floats(0.0, 1.0))
    steps = st.one_of(st.integers(0, 2), st.integers(0, 25))
    ok = st.floats(0.0, 1.0).map(lambda x: x >= failure_share)
    return draw(st.lists(st.tuples(steps, ok), min_size=30, max_size=300))


def window_reaches_ratio(policy: BreakerPolicy, seen: list[tuple[float, bool]]) -> bool:
    now = seen[-1][0]
    recent = [ok for at, ok in seen if now - policy.window < at <= now]
    failures = recent.count(False)
    return len(recent) >= policy.min_attempts and failures / len(recent) >= policy.failure_ratio


@given(policies, runs())
def test_never_opens_while_every_window_is_below_the_ratio(
    policy: BreakerPolicy, run: list[tuple[int, bool]]
):
    """Results are fed until the one that would bring its last 60 s to the ratio."""
    breaker = Breaker(policy)
    seen: list[tuple[float, bool]] = []
    tick = 0
    for steps, ok in run:
        tick += steps
        seen.append((tick * WIDTH, ok))
        if window_reaches_ratio(policy, seen):
            break
        assert breaker.record(tick * WIDTH, ok) is None
        assert breaker.state(tick * WIDTH) is CLOSED


@given(policies, runs())
def test_opens_on_the_first_result_whose_window_reaches_the_ratio(
    policy: BreakerPolicy, run: list[tuple[int, bool]]
):
    """A tail of failures a whole window after the run makes sure the ratio is reached."""
    breaker = Breaker(policy)
    seen: list[tuple[float, bool]] = []
    tail = [(BUCKETS, False)] + [(0, False)] * (policy.min_attempts - 1)
    tick = 0
    for steps, ok in run + tail:
        tick += steps
        seen.append((tick * WIDTH, ok))
        transition = breaker.record(tick * WIDTH, ok)
        if window_reaches_ratio(policy, seen):
            assert transition == Transition(CLOSED, OPEN, tick * WIDTH)
            return
    pytest.fail("the tail of failures did not reach the ratio")


@given(policies, st.integers(0, 2**32))
def test_bucket_count_stays_bounded_over_a_long_random_run(policy: BreakerPolicy, seed: int):
    """2000 calls of every kind, time moving on, back and jumping: never > BUCKETS buckets."""
    rng = random.Random(seed)
    breaker = Breaker(policy)
    now = 0.0
    for _ in range(2000):
        jump = rng.random() < 0.02
        now += rng.choice([-100.0, 100.0, 1000.0]) if jump else rng.uniform(-0.2, 0.6)
        ok = rng.random() < 0.5
        op = rng.choice(["record", "record", "probe", "allow", "abandon", "take", "state"])
        if op == "record":
            breaker.record(now, ok)
        elif op == "probe":
            breaker.record(now, ok, probe=True)
        elif op == "allow":
            breaker.allow(now)
        elif op == "abandon":
            breaker.abandon_probe()
        elif op == "take":
            breaker.take_transition(now)
        else:
            breaker.state(now)
        assert breaker.bucket_count <= BUCKETS
