"""The workers' expositions merged into one: every sample labelled with its worker, each
family's HELP and TYPE once."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import Metrics
from consumer.processes.exposition import merge_expositions, merge_families, with_worker_label


def worker_text(events: int, lag: dict[str, float], latency: float | None = None) -> str:
    """A worker's /metrics: ``events`` triggers, a lag per partition, one latency maybe."""
    metrics = Metrics()
    if events:
        metrics.events.labels("trigger").inc(events)
    for partition, value in lag.items():
        metrics.lag.labels("exam-events", partition).set(value)
    if latency is not None:
        metrics.latency.observe(latency)
    metrics.ready.set(1)
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_sample_of_every_worker_comes_out_once_with_its_worker_label() -> None:
    texts = {"0": worker_text(3, {"0": 5, "2": 0}, 0.02), "1": worker_text(7, {"1": 9})}
    merged = merge_expositions(texts).decode()
    expected = {
        (name, labels | {("worker", worker)}): value
        for worker, text in texts.items()
        for (name, labels), value in samples(text).items()
    }
    assert samples(merged) == expected
    lag = {
        (dict(labels)["partition"], dict(labels)["worker"]): value
        for (name, labels), value in samples(merged).items()
        if name == "itep_consumer_lag"
    }
    assert lag == {("0", "0"): 5, ("2", "0"): 0, ("1", "1"): 9}


def test_each_family_has_its_help_and_type_once_and_its_samples_together() -> None:
    merged = merge_expositions({"0": worker_text(1, {"0": 1}), "1": worker_text(2, {"1": 2})})
    lines = merged.decode().splitlines()
    for kind in ("# HELP", "# TYPE"):
        names = [line.split()[2] for line in lines if line.startswith(kind)]
        assert len(names) == len(set(names)), f"{kind} repeated"
    assert "# TYPE itep_events_consumed_total counter" in lines
    assert "# TYPE itep_webhook_latency_seconds histogram" in lines
    # Samples of one family follow its TYPE line, with no other family in between.
    current = None
    seen: set[str] = set()
    for line in lines:
        if line.startswith("# TYPE"):
            current = line.split()[2]
            assert current not in seen
            seen.add(current)
        elif not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert current is not None
            assert name.startswith(current.removesuffix("_total")), (current, line)


def test_the_merged_histogram_sums_per_worker_like_prometheus_would() -> None:
    merged = merge_expositions(
        {"0": worker_text(0, {}, latency=0.02), "1": worker_text(0, {}, latency=3.0)}
    ).decode()
    counts = {
        dict(labels)["worker"]: value
        for (name, labels), value in samples(merged).items()
        if name == "itep_webhook_latency_seconds_count"
    }
    assert counts == {"0": 1.0, "1": 1.0}
    buckets = {
        (dict(labels)["worker"], dict(labels)["le"]): value
        for (name, labels), value in samples(merged).items()
        if name == "itep_webhook_latency_seconds_bucket"
    }
    assert buckets[("0", "0.025")] == 1.0
    assert buckets[("1", "0.025")] == 0.0
    assert buckets[("1", "5.0")] == 1.0


def test_label_values_needing_escapes_survive_the_round_trip() -> None:
    metrics = Metrics()
    code = 'ACME "UNI"\\\nx'
    metrics.endpoint_attempt(code, "delivered").inc()
    merged = merge_expositions({"3": generate_latest(metrics.registry).decode()}).decode()
    (value,) = [
        v
        for (name, labels), v in samples(merged).items()
        if name == "itep_endpoint_attempts_total"
        and dict(labels) == {"tracking_code": code, "result": "delivered", "worker": "3"}
    ]
    assert value == 1.0


def test_a_family_only_one_worker_has_is_kept() -> None:
    """A partition's lag is reported by the worker owning it: no series elsewhere."""
    merged = merge_expositions({"0": worker_text(0, {"0": 4}), "1": worker_text(0, {})})
    lag = [
        dict(labels) for (name, labels) in samples(merged.decode()) if name == "itep_consumer_lag"
    ]
    assert lag == [{"topic": "exam-events", "partition": "0", "worker": "0"}]


def test_a_family_of_another_type_under_the_same_name_is_left_out() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Gauge("thing", "a gauge", registry=first).set(1)
    Counter("thing", "a counter", registry=second).inc()
    Histogram("other", "kept", registry=second).observe(1)
    families = merge_families(
        [
            with_worker_label(generate_latest(first).decode(), "0"),
            with_worker_label(generate_latest(second).decode(), "1"),
        ]
    )
    by_name = {f.name: f for f in families}
    assert by_name["thing"].type == "gauge"
    assert [s.labels["worker"] for s in by_name["thing"].samples] == ["0"]
    assert by_name["other"].type == "histogram"


def test_an_empty_group_renders_nothing() -> None:
    assert merge_expositions({}) == b""


def test_text_that_is_not_an_exposition_is_refused() -> None:
    with pytest.raises(ValueError, match=r".+"):
        with_worker_label('itep_ready{worker="0" 1\n', "0")
