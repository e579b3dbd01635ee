"""Tallies read at scrape expose what prometheus-client's own counter and histogram do."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from consumer.tallies import TallyCounter, TallyHistogram

BUCKETS = (0.005, 0.01, 0.025, 1, 15)
OBSERVED = (0.001, 0.005, 0.0051, 0.02, 0.5, 1.0, 14.9, 15.0, 15.1, 300.0)


def exposition(registry: CollectorRegistry) -> str:
    """The text a scrape returns, with the ``_created`` times (the moment each was made) out."""
    text = generate_latest(registry).decode()
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 <time>", text)


def test_a_tally_counter_scrapes_as_a_prometheus_counter() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter(
        "demo_attempts", "Attempts, by code and result", ["code", "result"], registry=theirs
    )
    tally = TallyCounter("demo_attempts", "Attempts, by code and result", ["code", "result"], ours)
    for labels, amount in ((("A", "ok"), 1.0), (("B", "failed"), 2.0), (("A", "ok"), 3.5)):
        counter.labels(*labels).inc(amount)
        tally.labels(*labels).inc(amount)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("demo_attempts_total", {"code": "A", "result": "ok"}) == 4.5


def test_a_tally_histogram_scrapes_as_a_prometheus_histogram() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("demo_latency_seconds", "Latency", registry=theirs, buckets=BUCKETS)
    tally = TallyHistogram("demo_latency_seconds", "Latency", BUCKETS, ours)
    for value in OBSERVED:
        histogram.observe(value)
        tally.observe(value)
    assert exposition(ours) == exposition(theirs)


def test_a_tally_refuses_to_go_down() -> None:
    tally = TallyCounter("demo_events", "Events", ["decision"], CollectorRegistry())
    with pytest.raises(ValueError, match="only goes up"):
        tally.labels("trigger").inc(-1)


def test_a_tally_counter_refuses_the_wrong_number_of_labels() -> None:
    tally = TallyCounter("demo_events", "Events", ["decision"], CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        tally.labels("trigger", "extra")


def test_a_name_taken_in_the_registry_is_refused() -> None:
    registry = CollectorRegistry()
    Counter("demo_events", "Events", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        TallyCounter("demo_events", "Events", [], registry)
