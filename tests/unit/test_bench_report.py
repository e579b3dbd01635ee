"""The throughput table shows the limit measured again at the end of a run, and its drift,
and the service's own sender in a bare loop, with what the service spends beyond it; the
schedule table gives each side's CPU per row."""

from __future__ import annotations

from bench.report import scheduled_lines, throughput_lines
from bench.results import Limit, Results, Scheduled, Throughput
from bench.window import Window


def _limit(seconds: float, cpu_seconds: float, client: str = "aiohttp") -> Limit:
    return Limit(
        requests=1_000,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        concurrency=100,
        per_host=100,
        client=client,
    )


def _service(cpu_seconds: float) -> Throughput:
    window = Window(webhooks=1_000, seconds=1.0, cpu_seconds=cpu_seconds, drained=True)
    return Throughput("2 fast", "service", 1_000, window, 2_000.0, "limit")


def test_a_second_limit_gets_its_own_row_against_the_first() -> None:
    results = Results(limit=_limit(1.0, 0.2), limit_again=_limit(2.0, 0.3))
    rows = [line for line in throughput_lines(results) if line.startswith("| 1 limit")]
    assert len(rows) == 2
    cells = [cell.strip() for cell in rows[1].split("|")]
    assert cells[1] == "1 limit, again at the end"
    assert cells[8:10] == ["0.300 ms", "1.50"]  # CPU per request, against the first


def test_the_drift_line_gives_rate_and_cpu_changes() -> None:
    results = Results(limit=_limit(1.0, 0.2), limit_again=_limit(2.0, 0.3))
    drift = [line for line in throughput_lines(results) if line.startswith("The limit")]
    assert drift == [
        "The limit measured again at the end of the run: 500 requests/s (-50%), "
        "0.300 ms CPU each (+50%); the ratios above are against the first measurement."
    ]


def test_one_limit_alone_has_no_drift_line() -> None:
    lines = throughput_lines(Results(limit=_limit(1.0, 0.2)))
    assert len(lines) == 3
    assert not any(line.startswith("The limit") for line in lines)


def test_the_services_sender_gets_a_row_against_the_limit() -> None:
    results = Results(limit=_limit(1.0, 0.2), limit_sender=_limit(0.5, 0.05, "sender"))
    [row] = [line for line in throughput_lines(results) if "sender" in line]
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[1:3] == [
        "1 the service's sender",
        "bare WebhookSender (the service's), 100 workers, 100/origin",
    ]
    assert cells[8:10] == ["0.050 ms", "0.25"]


def test_the_service_is_set_against_its_own_senders_bare_loop() -> None:
    results = Results(
        limit=_limit(1.0, 0.2),
        limit_sender=_limit(0.5, 0.05, "sender"),
        throughput=[_service(0.3)],
    )
    [line] = [line for line in throughput_lines(results) if line.startswith("Against")]
    assert line.startswith(
        "Against a bare loop of its own sender (0.050 ms per request), the service spends "
        "6.00x the CPU per webhook in scenario 2: 0.250 ms of each webhook"
    )


def test_without_the_senders_loop_there_is_no_such_line() -> None:
    results = Results(limit=_limit(1.0, 0.2), throughput=[_service(0.3)])
    assert not any(line.startswith("Against") for line in throughput_lines(results))


def test_the_schedule_table_gives_rows_per_second_and_each_sides_cpu_per_row() -> None:
    results = Results(scheduled=[Scheduled("resumed", 20_000, 8.0, 4.0, 5.0)])
    assert scheduled_lines(results)[2] == (
        "| resumed | 20,000 | 8.0 s | 2,500 | 0.200 ms | 0.250 ms |"
    )
    assert scheduled_lines(Results()) == []


def test_the_senders_loop_on_slow_receivers_comes_before_scenario_3_against_its_bound() -> None:
    """The bare sender against the slow receivers at the service's concurrency: a row
    against the same bound, and a line on how much of it the service reaches."""
    sender = Limit(
        requests=1_000,
        seconds=0.25,
        cpu_seconds=0.05,
        concurrency=1_000,
        per_host=100,
        client="sender",
        delay=0.2,
    )
    window = Window(webhooks=1_000, seconds=0.3, cpu_seconds=0.2, drained=True)
    service = Throughput("3 slow", "service", 1_000, window, 5_000.0, "bound")
    results = Results(limit=_limit(1.0, 0.2), slow_sender=sender, throughput=[service])
    lines = throughput_lines(results)
    slow = [line for line in lines if line.startswith("| 3 slow")]
    assert len(slow) == 2
    cells = [cell.strip() for cell in slow[0].split("|")]
    assert cells[2] == (
        "bare WebhookSender (the service's), 1,000 workers, 100/origin, receivers after 200 ms"
    )
    assert cells[5:8] == ["4,000", "bound 5,000/s", "0.80"]
    assert "service" in slow[1]
    [line] = [line for line in lines if line.startswith("With slow receivers")]
    assert line.endswith(
        "reaches 4,000 requests/s; the service in scenario 3 delivers 0.83 of that."
    )
