"""Prometheus metrics of the service, one registry per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from consumer.tallies import Tally, TallyCounter, TallyHistogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # Counted on every event or POST: plain numbers, read when scraped.
        self.events = TallyCounter(
            "itep_events_consumed", "Exam events consumed, by decision", ["decision"], r
        )
        self.outcomes = TallyCounter(
            "itep_webhook_outcomes", "Outcome records published", ["outcome", "reason"], r
        )
        self.attempts = TallyCounter(
            "itep_webhook_attempts", "Webhook POST attempts, by result", ["result"], r
        )
        self.endpoint_attempts = TallyCounter(
            "itep_endpoint_attempts",
            "Webhook POST attempts, by tracking code and result (delivered, retry, failed)",
            ["tracking_code", "result"],
            r,
        )
        self.latency = TallyHistogram(
            "itep_webhook_latency_seconds",
            "Latency of webhook POSTs",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
            r,
        )
        self.in_flight = Gauge(
            "itep_events_in_flight",
            "Events fetched whose outcome is not yet published",
            registry=r,
        )
        self.paused = Gauge(
            "itep_partitions_paused", "1 while fetching is paused for back-pressure", registry=r
        )
        self.held = Gauge(
            "itep_partitions_held",
            "Partitions paused because MAX_UNCOMMITTED_PER_PARTITION records wait behind "
            "an unfinished one",
            registry=r,
        )
        self.commits = Counter(
            "itep_offset_commits", "Offset commits, by trigger", ["why"], registry=r
        )
        self.lag = Gauge(
            "itep_consumer_lag",
            "Records between the group's committed offset and the high watermark, per "
            "assigned partition, read from the broker",
            ["topic", "partition"],
            registry=r,
        )
        self.commit_age = Gauge(
            "itep_consumer_commit_age_seconds",
            "Seconds the committed offset has not moved while the partition has lag (0 when "
            "caught up): growing means stalled",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge(
            "itep_ready", "1 while the consume loop runs (what /readyz answers), else 0", registry=r
        )
        self.scheduled = Gauge(
            "itep_scheduled_deliveries",
            "Deliveries in the schedule, by state (pending: waiting for an attempt; dead: "
            "failed for good, kept for replay)",
            ["state"],
            registry=r,
        )
        self.oldest_overdue = Gauge(
            "itep_schedule_oldest_overdue_seconds",
            "How long the oldest due delivery has waited past its due time (paused codes "
            "and deliveries being attempted left out)",
            registry=r,
        )
        self.scheduled_in_flight = Gauge(
            "itep_scheduled_attempts_in_flight",
            "Deliveries claimed from the schedule and being attempted by this instance",
            registry=r,
        )
        self.breaker_state = Gauge(
            "itep_breaker_state",
            "Circuit breaker per tracking code: 0 closed, 1 half-open, 2 open",
            ["tracking_code"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "itep_breaker_transitions",
            "Circuit breaker state changes, by tracking code and new state",
            ["tracking_code", "state"],
            registry=r,
        )
        self.breaker_skipped = Counter(
            "itep_breaker_skipped_attempts",
            "Attempts not made because the tracking code's breaker was open",
            ["tracking_code"],
            registry=r,
        )

    def event(self, decision: str) -> Tally:
        return self.events.labels(decision)

    def attempt(self, result: str) -> Tally:
        return self.attempts.labels(result)

    def outcome(self, outcome: str, reason: str) -> Tally:
        return self.outcomes.labels(outcome, reason)

    def endpoint_attempt(self, tracking_code: str, result: str) -> Tally:
        return self.endpoint_attempts.labels(tracking_code, result)
