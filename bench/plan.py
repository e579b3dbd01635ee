"""How big each scenario is: the full run (``make bench``) and the quick one (``--quick``)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    events: int  # scenarios 2 and 3 (fast and slow receivers)
    tests: int
    codes: int
    slow_delay: float  # seconds a slow receiver takes to answer
    limit_requests: int
    drain_cap: float  # longest window of a service run in scenarios 2 and 3
    faststream_cap: float
    naive_fast_window: float
    naive_slow_window: float
    latency_rates: tuple[int, ...]
    latency_seconds: float
    latency_warmup: float  # seconds at 100 events/s before the first measured rate
    backlogs: tuple[int, ...]
    backlog_window: float
    scaling_in_flight: tuple[int, ...]
    scaling_seconds: float  # each in-flight run is sized for this long at its reference rate
    scaling_processes: tuple[int, ...]
    scaling_process_events: int
    schedule_events: int  # scenario 8: events held, then drained from the schedule

    def with_events(self, events: int) -> Plan:
        return replace(self, events=events, tests=max(1, events // 10))


FULL = Plan(
    name="full",
    events=200_000,
    tests=20_000,
    codes=20,
    slow_delay=0.2,
    limit_requests=200_000,
    drain_cap=600.0,
    faststream_cap=600.0,
    naive_fast_window=60.0,
    naive_slow_window=30.0,
    latency_rates=(500, 2000),
    latency_seconds=60.0,
    latency_warmup=5.0,
    backlogs=(100_000, 300_000, 1_000_000),
    backlog_window=90.0,
    scaling_in_flight=(100, 300, 1000, 3000),
    scaling_seconds=30.0,
    scaling_processes=(1, 2),
    scaling_process_events=100_000,
    schedule_events=50_000,
)

QUICK = Plan(
    name="quick",
    events=20_000,
    tests=2_000,
    codes=20,
    slow_delay=0.2,
    limit_requests=20_000,
    drain_cap=120.0,
    faststream_cap=30.0,
    naive_fast_window=10.0,
    naive_slow_window=10.0,
    latency_rates=(500, 2000),
    latency_seconds=10.0,
    latency_warmup=3.0,
    backlogs=(20_000, 60_000),
    backlog_window=15.0,
    scaling_in_flight=(100, 300, 1000, 3000),
    scaling_seconds=5.0,
    scaling_processes=(1, 2),
    scaling_process_events=10_000,
    schedule_events=5_000,
)
