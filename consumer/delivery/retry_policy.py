"""What to do after one delivery attempt (CONTRACT section 3). Pure: no I/O, ``now`` passed in.

A 2xx is delivered. Connection errors, timeouts, 408, 429 and 5xx are retried along the
schedule, honouring ``Retry-After`` within the schedule's bounds, with +-20% jitter; any
other status, a redirect or a blocked endpoint fails at once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final

from consumer.records import record

RETRIABLE_STATUSES: Final = frozenset({408, 429})
JITTER: Final = 0.2


@record
class AttemptResult:
    """What one POST came to. ``status`` is None when no response arrived.

    ``error`` is a reason code (``timeout``, ``connection_error``, ``endpoint_blocked``)
    when there is no status.
    """

    status: int | None
    latency_ms: float
    error: str | None = None
    retry_after: str | None = None


@record
class Delivered:
    pass


@record
class RetryAt:
    reason: str
    at: datetime


@record
class Fail:
    reason: str


Verdict = Delivered | RetryAt | Fail


def failure_reason(result: AttemptResult) -> str | None:
    """The snake_case reason of a failed attempt, or None when it succeeded."""
    if result.status is None:
        return result.error or "connection_error"
    if 200 <= result.status < 300:
        return None
    if 300 <= result.status < 400:
        return "redirect"
    return f"http_{result.status}"


def is_retriable(result: AttemptResult) -> bool:
    if result.status is None:
        return result.error in ("timeout", "connection_error")
    return result.status in RETRIABLE_STATUSES or 500 <= result.status < 600


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """``delay`` moved at random by up to +-20%, so that retries of one outage spread out."""
    return delay * (1 + (rng or random).uniform(-JITTER, JITTER))


def jittered_later(delay: float, rng: random.Random | None = None) -> float:
    """``delay`` pushed later at random by up to 20%: never sooner than ``delay``."""
    return delay * (1 + (rng or random).uniform(0, JITTER))


def held_delay(
    step_delay: float, reopens_in: float, longest: float, rng: random.Random | None = None
) -> float:
    """Seconds an open breaker holds a delivery on a step of ``step_delay``: the step's
    delay (jittered), or until the breaker lets a probe through in ``reopens_in`` seconds
    when that is later (pushed later by up to 20%, never past the ``longest`` step), since
    a delivery claimed before the probe would only be held again."""
    delay = jittered(step_delay, rng)
    if reopens_in > delay:
        delay = min(jittered_later(reopens_in, rng), longest)
    return delay


def decide_retry(
    result: AttemptResult,
    attempt: int,
    now: datetime,
    schedule: Sequence[float],
    rng: random.Random | None = None,
) -> Verdict:
    """The verdict after ``attempt`` (1-based) came to ``result``.

    ``schedule[i]`` is the delay in seconds before attempt ``i + 2``; when it runs out the
    verdict is ``Fail("retries_exhausted")``.
    """
    reason = failure_reason(result)
    if reason is None:
        return Delivered()
    if not is_retriable(result):
        return Fail(reason)
    if attempt > len(schedule):
        return Fail("retries_exhausted")
    delay = jittered(schedule[attempt - 1], rng)
    asked = retry_after_seconds(result.retry_after, now)
    if asked is not None:
        delay = max(delay, min(asked, max(schedule)))
    return RetryAt(reason, now + timedelta(seconds=delay))
