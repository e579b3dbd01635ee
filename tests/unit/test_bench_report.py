"""The throughput table shows the limit measured again at the end of a run, and its drift,
and the service's own sender in a bare loop, with what the service spends beyond it; the
schedule table gives each side's CPU per row."""

from __future__ import annotations

import pytest

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


def _processes(processes: int, seconds: float, busy: float) -> Throughput:
    window = Window(
        webhooks=10_000, seconds=seconds, cpu_seconds=1.0, drained=True, machine_busy=busy
    )
    relay = "service, 1 process" if processes == 1 else f"service, --processes {processes}"
    return Throughput("7 fast", relay, 10_000, window, None, "limit", "", processes)


def test_two_processes_are_set_against_what_the_cores_allowed_at_one_process_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One process at 10,000/s keeping 1.25 of 2 cores busy: the cores carry 1.6x at that
    cost, and the two-process run (1.4x, 1.75 busy) is set against it."""
    monkeypatch.setattr("bench.report.os.cpu_count", lambda: 2)
    results = Results(throughput=[_processes(1, 1.0, 1.25), _processes(2, 1 / 1.4, 1.75)])
    line = next(line for line in throughput_lines(results) if line.startswith("Processes:"))
    assert "one process kept 1.25 of 2 cores busy at 10,000 webhooks/s, 0.125 ms" in line
    assert "carry at most 1.60x that rate" in line
    assert "--processes 2: 1.40x one process, against the 1.60x the machine allowed" in line
    assert "(0.125 ms per webhook in that run, 1.75 of 2 cores busy)" in line


def test_the_ceiling_is_never_above_the_number_of_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With cores to spare (0.5 of 4 busy for one process) two processes can at most double."""
    monkeypatch.setattr("bench.report.os.cpu_count", lambda: 4)
    results = Results(throughput=[_processes(1, 1.0, 0.5), _processes(2, 0.5, 1.0)])
    line = next(line for line in throughput_lines(results) if line.startswith("Processes:"))
    assert "--processes 2: 2.00x one process, against the 2.00x the machine allowed" in line


def test_without_a_one_process_run_there_is_no_processes_line() -> None:
    results = Results(throughput=[_processes(2, 0.5, 1.0)])
    assert not any(line.startswith("Processes:") for line in throughput_lines(results))
