"""Whether an endpoint may be sent to now: a per-endpoint circuit breaker. Pure: ``now`` passed in.

CLOSED sends everything and counts results over the last ``window`` seconds; once that window
holds at least ``min_attempts`` results and ``failures / attempts >= failure_ratio`` it turns
OPEN and refuses every attempt for ``cooldown`` seconds. Then it reads HALF_OPEN and lets one
probe through: a probe success closes it with an empty window, a probe failure opens it again
for a fresh cooldown. Results that arrive while it is open, and results other than the probe's
while it is half-open, are ignored. The idea is Convoy's ``pkg/circuit_breaker``.

Counts are kept in ``BUCKETS`` time buckets of ``window / BUCKETS`` seconds, so memory does not
grow with the request rate; the window is the current bucket and the ``BUCKETS - 1`` before it,
so a result stops counting between ``window * (1 - 1 / BUCKETS)`` and ``window`` seconds after
it was recorded. A ``now`` earlier than one already seen is read as the latest seen.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

BUCKETS: Final = 20


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Open when ``failures / attempts >= failure_ratio`` over at least ``min_attempts``
    attempts recorded in the last ``window`` seconds; stay open ``cooldown`` seconds."""

    failure_ratio: float = 0.7
    min_attempts: int = 10
    window: float = 60.0
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio!r}")
        if self.min_attempts < 1:
            raise ValueError(f"min_attempts must be at least 1, got {self.min_attempts!r}")
        if not self.window > 0:
            raise ValueError(f"window must be positive, got {self.window!r}")
        if not self.cooldown > 0:
            raise ValueError(f"cooldown must be positive, got {self.cooldown!r}")


@dataclass(frozen=True, slots=True)
class Transition:
    """The breaker went from ``before`` to ``after`` at ``at`` seconds."""

    before: BreakerState
    after: BreakerState
    at: float


@dataclass(slots=True)
class _Bucket:
    index: int
    attempts: int = 0
    failures: int = 0


class Breaker:
    """The breaker of one endpoint.

    Call ``take_transition(now)`` before ``allow(now)`` so that the change to half-open is
    reported before the probe goes out; it is reportable only while that half-open lasts.
    """

    __slots__ = (
        "_attempts",
        "_buckets",
        "_failures",
        "_half_open_reported",
        "_latest",
        "_opened_at",
        "_policy",
        "_probing",
        "_width",
    )

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self._width = policy.window / BUCKETS
        self._buckets: deque[_Bucket] = deque()
        self._attempts = self._failures = 0  # summed over the buckets held
        self._latest: float | None = None
        self._opened_at: float | None = None
        self._probing = False
        self._half_open_reported = False

    def state(self, now: float) -> BreakerState:
        """OPEN reads as HALF_OPEN once the cooldown has passed."""
        return self._state_at(self._advance(now))

    def allow(self, now: float) -> bool:
        """Whether an attempt may start: always when closed, never when open, and when half-open
        for one caller only (the probe) until its result is recorded or it is abandoned."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probing:
            return False
        self._probing = True
        return True

    def record(self, now: float, ok: bool, *, probe: bool = False) -> Transition | None:
        """Count the result of one attempt; the transition it causes, if any.

        ``probe`` marks the result of the attempt that ``allow`` let through in half-open; it
        decides only while that probe is out. When closed every result counts, and when open
        every result is ignored: it is from an attempt that started before the breaker opened.
        """
        now = self._advance(now)
        state = self._state_at(now)
        if state is BreakerState.CLOSED:
            return self._count(now, ok)
        if state is BreakerState.OPEN or not (probe and self._probing):
            return None
        self._probing = False
        if ok:  # the window was emptied when it opened and has counted nothing since
            self._opened_at = None
            return Transition(BreakerState.HALF_OPEN, BreakerState.CLOSED, now)
        self._open(now)
        return Transition(BreakerState.HALF_OPEN, BreakerState.OPEN, now)

    def abandon_probe(self) -> None:
        """The probe will never report back (it was cancelled): let another one through."""
        self._probing = False

    def reopens_at(self) -> float | None:
        """When the open breaker turns half-open; None when it is not open (as of the latest
        ``now`` seen)."""
        if self._opened_at is None:
            return None
        at = self._opened_at + self._policy.cooldown
        if self._latest is not None and self._latest >= at:
            return None
        return at

    def take_transition(self, now: float) -> Transition | None:
        """The OPEN -> HALF_OPEN change, once, if it has happened by ``now`` and the breaker is
        still half-open from it; None otherwise."""
        now = self._advance(now)
        if self._opened_at is None or self._half_open_reported:
            return None
        at = self._opened_at + self._policy.cooldown
        if now < at:
            return None
        self._half_open_reported = True
        return Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, at)

    @property
    def probing(self) -> bool:
        """A probe was let through and its result is not in yet."""
        return self._probing

    @property
    def bucket_count(self) -> int:
        """How many time buckets are held; never more than ``BUCKETS``."""
        return len(self._buckets)

    def _advance(self, now: float) -> float:
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        if self._latest is None or now > self._latest:
            self._latest = now
        return self._latest

    def _state_at(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now >= self._opened_at + self._policy.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def _count(self, now: float, ok: bool) -> Transition | None:
        index = math.floor(now / self._width)
        buckets = self._buckets
        while buckets and buckets[0].index <= index - BUCKETS:
            gone = buckets.popleft()
            self._attempts -= gone.attempts
            self._failures -= gone.failures
        if not buckets or buckets[-1].index != index:
            buckets.append(_Bucket(index))
        bucket = buckets[-1]
        bucket.attempts += 1
        self._attempts += 1
        if not ok:
            bucket.failures += 1
            self._failures += 1
        if self._attempts < self._policy.min_attempts:
            return None
        if self._failures / self._attempts < self._policy.failure_ratio:
            return None
        self._open(now)
        return Transition(BreakerState.CLOSED, BreakerState.OPEN, now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._half_open_reported = False
        self._buckets.clear()
        self._attempts = self._failures = 0
