"""The benchmark's Kafka floor: stamps read from raw event values, and its rows in the report."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict

import orjson
import pytest

from bench.events import EventMix
from bench.floor import Forwarder, add_samples, forward_request, latency_ms, stamp_of
from bench.receiver import HookProtocol, Tally, _stamp
from bench.report import latency_lines
from bench.results import Latency, Results
from bench.scenarios.latency import latency_row, quantile

PUBLISHED_NS = 1_700_000_000_123_456_789
PUBLISHED_S = PUBLISHED_NS / 1e9


def event(oid: str, i: int = 0) -> bytes:
    """An event as the benchmark's producer encodes it, with ``oid`` as given."""
    _, value, _ = EventMix(run="t", codes=["C00"], tests=10).encoder()(i, oid)
    return value


def test_the_latency_is_the_poll_time_minus_the_stamp_in_the_oid() -> None:
    """The label and ns of ``lat:<label>:<ns>`` give the label and poll time - ns, in ms."""
    found = latency_ms(event(f"lat:500:{PUBLISHED_NS}"), PUBLISHED_S + 0.0075)
    assert found is not None
    label, ms = found
    assert label == "500"
    assert ms == pytest.approx(7.5, abs=1e-3)


def test_an_event_whose_oid_is_not_a_stamp_gives_no_sample() -> None:
    """Backlog events carry ``crm-<i>``; a stamp elsewhere than in the oid does not count."""
    assert latency_ms(event("crm-7"), PUBLISHED_S) is None
    other = orjson.dumps({"oid": "crm-1", "note": f"lat:500:{PUBLISHED_NS}"})
    assert latency_ms(other, PUBLISHED_S) is None


def test_samples_are_kept_per_label_and_unstamped_values_skipped() -> None:
    """Each stamped value adds one sample under its own label; others add nothing."""
    samples: defaultdict[str, list[float]] = defaultdict(list)
    values = [
        event(f"lat:500:{PUBLISHED_NS}", 0),
        event(f"lat:2000:{PUBLISHED_NS}", 1),
        event("crm-2", 2),
        None,
        event(f"lat:500:{PUBLISHED_NS + 1_000_000}", 3),
    ]
    stamps = add_samples(samples, values, PUBLISHED_S + 0.010)
    assert stamps == [
        ("500", PUBLISHED_NS),
        ("2000", PUBLISHED_NS),
        ("500", PUBLISHED_NS + 1_000_000),
    ]
    assert sorted(samples) == ["2000", "500"]
    assert samples["500"] == pytest.approx([10.0, 9.0], abs=1e-3)
    assert samples["2000"] == pytest.approx([10.0], abs=1e-3)


def test_the_quantile_is_the_nearest_rank() -> None:
    """p50 of 1..10 is 5, p99 is 10; no values give NaN."""
    values = [float(v) for v in range(1, 11)]
    assert quantile(values, 0.5) == 5.0
    assert quantile(values, 0.99) == 10.0
    assert math.isnan(quantile([], 0.5))


def test_a_rate_row_carries_the_floor_figures_and_its_cpu_per_event_polled() -> None:
    """The floor's samples are sorted for their quantiles; its CPU is divided by its count."""
    row = latency_row(
        500, 4, [30.0, 20.0, 40.0, 10.0], 0.0015, floor=[8.0, 6.0, 9.0, 7.0], floor_cpu=0.002
    )
    assert (row.received, row.p50_ms, row.max_ms) == (4, 20.0, 40.0)
    assert row.cpu_ms == pytest.approx(1.5)
    assert (row.floor_received, row.floor_p50_ms, row.floor_max_ms) == (4, 7.0, 9.0)
    assert row.floor_cpu_ms == pytest.approx(0.5)


def test_the_report_shows_the_floor_row_under_the_service_row_of_each_rate() -> None:
    """Per rate, the service's row and then the floor's, and a line saying what it is."""
    row = latency_row(500, 5000, [20.0], 0.0016, floor=[7.5], floor_cpu=0.001)
    results = Results(latency=[row])
    lines = latency_lines(results)
    assert lines[0].startswith("| 4 latency, rate | published | received | p50 |")
    assert lines[2] == "| 500/s, service | 5,000 | 1 | 20.0 ms | 20.0 ms | 20.0 ms | 1.600 ms |"
    assert lines[3] == "| 500/s, Kafka floor | 5,000 | 1 | 7.5 ms | 7.5 ms | 7.5 ms | 1.000 ms |"
    assert any(line.startswith("Kafka floor: a bare aiokafka consumer") for line in lines)


def test_the_report_has_no_floor_row_when_the_floor_did_not_run() -> None:
    """A row without floor figures renders as the service's row alone, with no floor line."""
    row = Latency("500/s", 500, 10, 10, 20.0, 30.0, 40.0, 1.5)
    lines = latency_lines(Results(latency=[row]))
    assert len(lines) == 3
    assert "Kafka floor" not in "\n".join(lines)


def test_a_stamped_event_is_posted_on_with_its_stamp_as_the_oid_the_receiver_reads() -> None:
    """The POST carries ``lat:<label>:<ns>`` in the OID of its form's ``data``, as the
    receiver parses a webhook, to the URL given; an unstamped event posts nothing."""
    stamp = stamp_of(event(f"lat:floor500:{PUBLISHED_NS}"))
    assert stamp is not None
    request = forward_request(stamp, "http://127.0.0.1:9/hook")
    assert request.url == "http://127.0.0.1:9/hook"
    assert _stamp(request.body) == ("floor500", PUBLISHED_NS)
    assert stamp_of(event("crm-3")) is None


async def test_the_forwarder_posts_each_stamped_event_to_a_real_receiver() -> None:
    """Stamped values reach an in-process receiver on loopback, timed there from their
    stamps; unstamped values and None are skipped."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: HookProtocol(tally, 0.0, stamps=True), "127.0.0.1", 0)
        for _ in range(2)
    ]
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}/hook" for s in servers]
    now_ns = time.time_ns()
    values = [event(f"lat:floor500:{now_ns}", 0), event("crm-1", 1), None]
    values.append(event(f"lat:floor2000:{now_ns}", 2))
    try:
        async with Forwarder(urls) as forwarder:
            forwarder.forward(add_samples(defaultdict(list), values, time.time()))
        assert forwarder.failed == 0
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    assert tally.count == 2
    assert sorted(tally.samples) == ["floor2000", "floor500"]
    assert all(0 <= ms < 5000 for ms in tally.samples["floor500"] + tally.samples["floor2000"])


def test_the_report_shows_the_floors_posts_under_its_polls() -> None:
    """The arrivals of the floor's posts make a third row per rate, with no CPU figure."""
    row = latency_row(500, 5000, [20.0], 0.0016, floor=[7.5], floor_cpu=0.001, hop=[9.0, 8.0, 8.5])
    lines = latency_lines(Results(latency=[row]))
    posted = "| 500/s, Kafka floor, posted on | 5,000 | 3 | 8.5 ms | 9.0 ms | 9.0 ms | - |"
    assert lines[4] == posted
    assert any("Posted on: the same floor POSTing" in line for line in lines)
