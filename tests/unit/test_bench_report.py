"""The throughput table shows the limit measured again at the end of a run, and its drift."""

from __future__ import annotations

from bench.report import throughput_lines
from bench.results import Limit, Results


def _limit(seconds: float, cpu_seconds: float) -> Limit:
    return Limit(
        requests=1_000, seconds=seconds, cpu_seconds=cpu_seconds, concurrency=100, per_host=100
    )


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
