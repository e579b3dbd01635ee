"""What happens after one delivery attempt: delivered, retried when, or failed why."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from consumer.delivery.retry_policy import (
    AttemptResult,
    Delivered,
    Fail,
    RetryAt,
    decide_retry,
    held_delay,
)

NOW = datetime(2026, 11, 25, 16, 2, 11, tzinfo=UTC)
SCHEDULE = (5.0, 300.0, 1800.0)


def status(code: int, retry_after: str | None = None) -> AttemptResult:
    return AttemptResult(status=code, latency_ms=12.0, retry_after=retry_after)


def error(code: str) -> AttemptResult:
    return AttemptResult(status=None, latency_ms=5000.0, error=code)


def decide(result: AttemptResult, attempt: int = 1, seed: int = 7) -> object:
    return decide_retry(result, attempt, NOW, SCHEDULE, random.Random(seed))


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(code: int) -> None:
    assert decide(status(code)) == Delivered()


@pytest.mark.parametrize("code", [300, 301, 302, 303, 307, 308])
def test_redirect_fails_at_once(code: int) -> None:
    assert decide(status(code)) == Fail("redirect")


@pytest.mark.parametrize("code", [400, 401, 403, 404, 405, 410, 422])
def test_other_4xx_fails_at_once_with_its_status(code: int) -> None:
    assert decide(status(code)) == Fail(f"http_{code}")


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (status(408), "http_408"),
        (status(429), "http_429"),
        (status(500), "http_500"),
        (status(502), "http_502"),
        (status(503), "http_503"),
        (status(599), "http_599"),
        (error("timeout"), "timeout"),
        (error("connection_error"), "connection_error"),
    ],
)
def test_transient_failure_is_retried_with_its_reason(result: AttemptResult, reason: str) -> None:
    verdict = decide(result)
    assert isinstance(verdict, RetryAt)
    assert verdict.reason == reason


@pytest.mark.parametrize("code", ["endpoint_blocked", "invalid_url"])
def test_refused_target_fails_at_once(code: str) -> None:
    assert decide(error(code)) == Fail(code)


def test_every_attempt_of_the_schedule_is_retried_then_exhausted() -> None:
    for attempt in range(1, len(SCHEDULE) + 1):
        assert isinstance(decide(status(503), attempt=attempt), RetryAt)
    assert decide(status(503), attempt=len(SCHEDULE) + 1) == Fail("retries_exhausted")


def test_empty_schedule_fails_the_first_transient_failure() -> None:
    verdict = decide_retry(error("timeout"), 1, NOW, (), random.Random(1))
    assert verdict == Fail("retries_exhausted")


def test_permanent_failure_after_many_attempts_keeps_its_own_reason() -> None:
    assert decide(status(404), attempt=10) == Fail("http_404")


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_delay_follows_the_schedule_within_20_percent_jitter(attempt: int) -> None:
    base = SCHEDULE[attempt - 1]
    delays = set()
    for seed in range(200):
        verdict = decide(status(500), attempt=attempt, seed=seed)
        assert isinstance(verdict, RetryAt)
        delay = (verdict.at - NOW).total_seconds()
        assert base * 0.8 <= delay <= base * 1.2
        delays.add(round(delay, 6))
    assert len(delays) > 100, "jitter spreads the retries"


def test_same_seed_gives_the_same_time() -> None:
    assert decide(status(500), seed=42) == decide(status(500), seed=42)


def test_retry_after_seconds_is_honoured() -> None:
    verdict = decide(status(503, retry_after="120"), attempt=1)
    assert verdict == RetryAt("http_503", NOW + timedelta(seconds=120))


def test_retry_after_http_date_is_honoured() -> None:
    when = format_datetime(NOW + timedelta(seconds=600), usegmt=True)
    verdict = decide(status(429, retry_after=when), attempt=1)
    assert verdict == RetryAt("http_429", NOW + timedelta(seconds=600))


def test_retry_after_is_clamped_to_the_schedule_maximum() -> None:
    verdict = decide(status(503, retry_after="86400"), attempt=1)
    assert verdict == RetryAt("http_503", NOW + timedelta(seconds=max(SCHEDULE)))
    far = format_datetime(NOW + timedelta(days=3), usegmt=True)
    verdict = decide(status(503, retry_after=far), attempt=1)
    assert verdict == RetryAt("http_503", NOW + timedelta(seconds=max(SCHEDULE)))


def test_retry_after_shorter_than_the_schedule_does_not_shorten_it() -> None:
    verdict = decide(status(503, retry_after="1"), attempt=2)
    assert isinstance(verdict, RetryAt)
    assert (verdict.at - NOW).total_seconds() >= SCHEDULE[1] * 0.8


def test_retry_after_in_the_past_leaves_the_schedule() -> None:
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    plain = decide(status(503), attempt=1, seed=3)
    assert decide(status(503, retry_after=past), attempt=1, seed=3) == plain


@pytest.mark.parametrize("garbage", ["soon", "-5", "1.5", "", "²", "٣", "Mon, 99 Foo 2026"])
def test_unreadable_retry_after_is_ignored(garbage: str) -> None:
    plain = decide(status(503), attempt=1, seed=3)
    assert decide(status(503, retry_after=garbage), attempt=1, seed=3) == plain


def test_a_breaker_hold_lasts_the_step_when_the_probe_comes_sooner() -> None:
    delays = [held_delay(300.0, 30.0, 3600.0, random.Random(seed)) for seed in range(200)]
    assert all(240.0 <= d <= 360.0 for d in delays)


def test_a_breaker_hold_lasts_until_the_probe_when_that_is_later() -> None:
    """Never sooner than the probe (up to a fifth later), never past the longest step."""
    delays = [held_delay(5.0, 30.0, 3600.0, random.Random(seed)) for seed in range(200)]
    assert all(30.0 <= d <= 36.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100, "jitter spreads the held deliveries"
    assert held_delay(5.0, 1000.0, 300.0, random.Random(1)) == 300.0
