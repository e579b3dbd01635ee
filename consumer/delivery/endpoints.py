"""Which deliveries may be attempted now, per endpoint. Pure: no I/O, clocks passed in.

An endpoint is a tracking code: the unit staff configure, pause and fix, and the one a
partner's outage belongs to. Two partners behind one shared host (a hosting provider, say)
are two endpoints, so that one partner's broken path cannot cut off the other; a host that is
down for both trips both breakers within ``min_attempts`` attempts each.

``EndpointGate.admit`` answers, for one delivery about to be attempted:

- ``Hold("tracking_code_paused")`` while staff have paused the code;
- ``Hold("circuit_open")`` while its breaker is open;
- ``Hold("endpoint_busy")`` while the code has ``share`` attempts in flight: its share of the
  in-flight window is full, and the delivery waits in the schedule instead of a slot;
- ``Hold("circuit_open")`` while its breaker is half-open with the probe out;
- otherwise ``Admit``: the attempt holds one of the code's slots until ``done``.

A delivery on the schedule's last step is attempted even when the breaker is open: the
breaker spares a failing endpoint, it never fails a delivery by itself.
"""

from __future__ import annotations

from collections.abc import Callable

from consumer.delivery.breaker import Breaker, BreakerPolicy, BreakerState, Transition
from consumer.records import record
from consumer.tracking_codes import TrackingCode

PAUSED = "tracking_code_paused"
BUSY = "endpoint_busy"
CIRCUIT_OPEN = "circuit_open"


@record
class Admit:
    code: str
    probe: bool = False
    token: int = 0
    started: float = 0.0


@record
class Hold:
    reason: str


Admission = Admit | Hold
TransitionListener = Callable[[str, Transition], None]


class EndpointGate:
    """Per tracking code: attempts in flight against ``share``, and a circuit breaker."""

    def __init__(
        self,
        share: int,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float],
        on_transition: TransitionListener = lambda code, change: None,
    ) -> None:
        if share < 1:
            raise ValueError("share must be at least 1")
        self.share = share
        self.policy = policy
        self._clock = clock
        # Called with the code and the change each time a breaker changes state.
        self.on_transition = on_transition
        self._in_flight: dict[str, int] = {}
        self._starts: dict[str, dict[int, float]] = {}  # code -> token -> start of attempt
        self._latency: dict[str, float] = {}  # code -> moving average of attempt durations
        self._tokens = 0
        self._breakers: dict[str, Breaker] = {}
        self.skipped = 0  # attempts not made because a breaker was open
        # Called with the code each time one of its attempts ends and frees a slot.
        self.on_freed: Callable[[str], None] = lambda code: None

    def in_flight(self, code: str) -> int:
        return self._in_flight.get(code, 0)

    def state(self, code: str) -> BreakerState:
        breaker = self._breakers.get(code)
        return breaker.state(self._clock()) if breaker is not None else BreakerState.CLOSED

    def open_for(self, code: str) -> float:
        """Seconds until the open breaker of ``code`` lets a probe through; 0 when it is not
        open."""
        breaker = self._breakers.get(code)
        if breaker is None:
            return 0.0
        at = breaker.reopens_at()
        return max(0.0, at - self._clock()) if at is not None else 0.0

    def probing(self, code: str) -> bool:
        """True while the probe of ``code``'s half-open breaker is out."""
        breaker = self._breakers.get(code)
        return breaker is not None and breaker.probing

    def admit(self, code: TrackingCode, *, last_step: bool = False) -> Admission:
        if code.paused:
            return Hold(PAUSED)
        name = code.code
        now = self._clock()
        breaker = self._breaker(name)
        self._report(name, breaker.take_transition(now))
        state = breaker.state(now)
        if state is BreakerState.OPEN and not last_step:
            # Before the share: behind a hanging endpoint the share stays full until its
            # attempts time out, and a delivery held as busy would be claimed then only to
            # be held again for the breaker.
            self.skipped += 1
            return Hold(CIRCUIT_OPEN)
        if self._in_flight.get(name, 0) >= self.share:
            return Hold(BUSY)
        probe = False
        if state is not BreakerState.CLOSED:
            probe = breaker.allow(now)
            if not probe and not last_step:
                self.skipped += 1
                return Hold(CIRCUIT_OPEN)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        self._tokens += 1
        self._starts.setdefault(name, {})[self._tokens] = now
        return Admit(name, probe, self._tokens, now)

    def latency_estimate(self, code: str) -> float:
        """How long one attempt of ``code`` takes, as far as can be told now: the moving
        average of finished attempts, or the age of the oldest one still running when that
        is longer (a hanging endpoint finishes none)."""
        now = self._clock()
        starts = self._starts.get(code)
        oldest = now - min(starts.values()) if starts else 0.0
        return max(self._latency.get(code, 0.0), oldest)

    def expected_wait(self, code: str, ahead: int) -> float:
        """Roughly how long a delivery with ``ahead`` others before it waits for a slot."""
        return (ahead + 1) * self.latency_estimate(code) / self.share

    def done(self, admitted: Admit, *, ok: bool | None) -> None:
        """The admitted attempt ended: ``ok`` False for a failure that counts against the
        endpoint (timeout, connection error, 408, 429, 5xx), None when it never reached
        the endpoint (cancelled)."""
        code = admitted.code
        left = self._in_flight.get(code, 0) - 1
        if left > 0:
            self._in_flight[code] = left
        else:
            self._in_flight.pop(code, None)
        now = self._clock()
        starts = self._starts.get(code)
        if starts is not None:
            starts.pop(admitted.token, None)
            if not starts:
                del self._starts[code]
        if ok is not None:
            took = now - admitted.started
            average = self._latency.get(code)
            self._latency[code] = took if average is None else average + 0.2 * (took - average)
        self.on_freed(code)
        breaker = self._breaker(code)
        if ok is None:
            if admitted.probe:
                breaker.abandon_probe()
            return
        self._report(admitted.code, breaker.take_transition(now))
        self._report(admitted.code, breaker.record(now, ok, probe=admitted.probe))

    def excluded(self) -> list[str]:
        """Codes whose due deliveries should not be claimed now: share full, or a probe out."""
        full = [code for code, n in self._in_flight.items() if n >= self.share]
        probing = [code for code, b in self._breakers.items() if b.probing]
        return sorted(set(full) | set(probing))

    def refresh(self) -> None:
        """Report breakers that turned half-open since they were last looked at."""
        now = self._clock()
        for code, breaker in self._breakers.items():
            self._report(code, breaker.take_transition(now))

    def _breaker(self, code: str) -> Breaker:
        breaker = self._breakers.get(code)
        if breaker is None:
            breaker = self._breakers[code] = Breaker(self.policy)
        return breaker

    def _report(self, code: str, change: Transition | None) -> None:
        if change is not None:
            self.on_transition(code, change)
