"""What a run found: one value per table row, filled in by the scenarios."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.window import Window


@dataclass(frozen=True, slots=True)
class Limit:
    """A bare client loop: requests POSTed, wall seconds, CPU seconds of its process.
    ``client`` is ``aiohttp`` (the limit) or ``sender`` (the service's own sender)."""

    requests: int
    seconds: float
    cpu_seconds: float
    concurrency: int
    per_host: int
    client: str = "aiohttp"
    delay: float = 0.0  # seconds each receiver took to answer

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000.0 * self.cpu_seconds / self.requests


@dataclass(frozen=True, slots=True)
class Throughput:
    """One relay run against a reference measured in the same run."""

    scenario: str
    relay: str
    events: int
    window: Window
    reference: float | None  # webhooks/s the ratio is taken against
    reference_name: str
    note: str = ""
    processes: int = 1  # service processes of the run (scenario 7's --processes rows)


@dataclass(frozen=True, slots=True)
class Latency:
    """One rate: the service's publication-to-arrival figures, the Kafka floor's
    publication-to-poll figures (a bare consumer, at the same rate for the same time), and
    the arrivals of the events that floor posted on (publication to receipt, one HTTP hop)."""

    label: str
    rate: int
    published: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms: float  # service CPU per webhook over the phase
    floor_received: int = 0  # events the floor consumer polled; 0 when it did not run
    floor_p50_ms: float = math.nan
    floor_p99_ms: float = math.nan
    floor_max_ms: float = math.nan
    floor_cpu_ms: float = math.nan  # the floor consumer's CPU per event polled and posted
    hop_received: int = 0  # the floor's posts that arrived; 0 when it posted none
    hop_p50_ms: float = math.nan
    hop_p99_ms: float = math.nan
    hop_max_ms: float = math.nan


@dataclass(frozen=True, slots=True)
class Backlog:
    backlog: int
    window: Window


@dataclass(frozen=True, slots=True)
class Scheduled:
    """Scenario 8: ``rows`` of the schedule worked through in ``seconds``; the service's and
    Postgres's CPU over that window, per row."""

    run: str  # "resumed" (delivered) or "held again" (breaker open)
    rows: int
    seconds: float
    service_cpu_s: float
    postgres_cpu_s: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.nan

    @property
    def service_cpu_ms(self) -> float:
        return 1000.0 * self.service_cpu_s / self.rows

    @property
    def postgres_cpu_ms(self) -> float:
        return 1000.0 * self.postgres_cpu_s / self.rows


@dataclass(slots=True)
class Results:
    limit: Limit | None = None
    limit_again: Limit | None = None  # measured once more at the end of a run, for drift
    limit_sender: Limit | None = None  # the same loop through the service's WebhookSender
    # Scenario 3's receivers, the service's sender alone at MAX_IN_FLIGHT: what the machine
    # lets any client reach against the concurrency bound
    slow_sender: Limit | None = None
    throughput: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    backlog: list[Backlog] = field(default_factory=list)
    scheduled: list[Scheduled] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
