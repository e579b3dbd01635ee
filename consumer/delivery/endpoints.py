"""Which deliveries may be attempted now, per endpoint. Pure: no I/O, clocks passed in.

An endpoint is a tracking code: the unit staff configure, pause and fix, and the one a
partner's outage belongs to. Two partners behind one shared host (a hosting provider, say)
are two endpoints, so that one partner's broken path cannot cut off the other; a host that is
down for both trips both breakers within ``min_attempts`` attempts each.

``EndpointGate.admit`` answers, for one delivery about to be attempted:

- ``Hold("tracking_code_paused")`` while staff have paused the code;
- ``Hold("endpoint_busy")`` while the code has ``share`` attempts in flight: its share of the
  in-flight window is full, and the delivery waits in the schedule instead of a slot;
- ``Hold("circuit_open")`` while its breaker is open, or half-open with the probe out;
- otherwise ``Admit``: the attempt holds one of the code's slots until ``done``.

A delivery on the schedule's last step is attempted even when the breaker is open: the
breaker spares a failing endpoint, it never fails a delivery by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consumer.delivery.breaker import Breaker, BreakerPolicy, BreakerState, Transition
from consumer.tracking_codes import TrackingCode

PAUSED = "tracking_code_paused"
BUSY = "endpoint_busy"
CIRCUIT_OPEN = "circuit_open"


@dataclass(frozen=True, slots=True)
class Admit:
    code: str
    probe: bool = False


@dataclass(frozen=True, slots=True)
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
        self._on_transition = on_transition
        self._in_flight: dict[str, int] = {}
        self._breakers: dict[str, Breaker] = {}
        self.skipped = 0  # attempts not made because a breaker was open
        # Called when a code whose share was full frees a slot (the schedule runner claims).
        self.on_freed: Callable[[], None] = lambda: None

    def in_flight(self, code: str) -> int:
        return self._in_flight.get(code, 0)

    def state(self, code: str) -> BreakerState:
        breaker = self._breakers.get(code)
        return breaker.state(self._clock()) if breaker is not None else BreakerState.CLOSED

    def admit(self, code: TrackingCode, *, last_step: bool = False) -> Admission:
        if code.paused:
            return Hold(PAUSED)
        name = code.code
        if self._in_flight.get(name, 0) >= self.share:
            return Hold(BUSY)
        now = self._clock()
        breaker = self._breaker(name)
        self._report(name, breaker.take_transition(now))
        probe = False
        state = breaker.state(now)
        if state is not BreakerState.CLOSED:
            probe = breaker.allow(now)
            if not probe and not last_step:
                self.skipped += 1
                return Hold(CIRCUIT_OPEN)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        return Admit(name, probe)

    def done(self, admitted: Admit, *, ok: bool | None) -> None:
        """The admitted attempt ended: ``ok`` False for a failure that counts against the
        endpoint (timeout, connection error, 408, 429, 5xx), None when it never reached
        the endpoint (cancelled)."""
        left = self._in_flight.get(admitted.code, 0) - 1
        if left > 0:
            self._in_flight[admitted.code] = left
        else:
            self._in_flight.pop(admitted.code, None)
        if left == self.share - 1:
            self.on_freed()
        breaker = self._breaker(admitted.code)
        if ok is None:
            if admitted.probe:
                breaker.abandon_probe()
            return
        now = self._clock()
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
            self._on_transition(code, change)
