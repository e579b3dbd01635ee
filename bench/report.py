"""The run's tables in Markdown, and their place in ``BENCHMARKS.md``.

A full run replaces what stands between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``;
a quick run (``--quick``) what stands between ``<!-- bench-quick:begin -->`` and
``<!-- bench-quick:end -->``, so a quick run never overwrites the figures of a full one. The
rest of the file is written by hand and left alone. Missing markers are appended at the end.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.machine import Machine
from bench.plan import Plan
from bench.results import Limit, Results, Throughput
from bench.stack import ROOT, SERVICE_ROOT
from bench.window import Window
from consumer.settings import Settings


def markers(quick: bool) -> tuple[str, str]:
    name = "bench-quick" if quick else "bench"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _n(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _ms(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f} ms"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _window(window: Window) -> str:
    return f"{window.seconds:.1f} s" + ("" if window.drained else " (cut)")


def _cores(busy: float) -> str:
    return "" if math.isnan(busy) else f"{busy:.2f} of {os.cpu_count() or 1} cores"


_CLIENTS = {"aiohttp": "bare aiohttp", "sender": "bare WebhookSender (the service's)"}


def _against(rate: float, reference: float | None, name: str) -> list[str]:
    """The reference and ratio cells of a row: empty without a reference."""
    if not reference:
        return ["", ""]
    return [f"{name} {reference:,.0f}/s", f"{rate / reference:.2f}"]


def _limit_row(
    name: str, limit: Limit, first: Limit, reference: float | None = None, ref_name: str = ""
) -> list[str]:
    receivers = f", receivers after {limit.delay * 1000:.0f} ms" if limit.delay else ""
    return [
        name,
        f"{_CLIENTS[limit.client]}, {limit.concurrency:,} workers, {limit.per_host}/origin"
        + receivers,
        f"{limit.requests:,}",
        f"{limit.seconds:.1f} s",
        _n(limit.rate),
        *_against(limit.rate, reference, ref_name),
        _ms(limit.cpu_ms),
        f"{limit.cpu_ms / first.cpu_ms:.2f}",
        "",
        "",
    ]


def _limit_drift(results: Results) -> str:
    """How far the limit moved between its measurements at the start and the end of a run:
    the machine's own drift, which every ratio against the first measurement carries."""
    first, again = results.limit, results.limit_again
    if first is None or again is None:
        return ""
    return (
        f"The limit measured again at the end of the run: {again.rate:,.0f} requests/s "
        f"({again.rate / first.rate - 1:+.0%}), {again.cpu_ms:.3f} ms CPU each "
        f"({again.cpu_ms / first.cpu_ms - 1:+.0%}); the ratios above are against the "
        "first measurement."
    )


def _service_run(results: Results, scenario: str) -> Throughput | None:
    """The service's run in ``scenario``, when it delivered anything."""
    return next(
        (
            r
            for r in results.throughput
            if r.scenario == scenario and r.relay == "service" and r.window.webhooks
        ),
        None,
    )


def _beyond_sender(results: Results) -> str:
    """The service's CPU per webhook in scenario 2 against a bare loop of its own sender:
    what the pipeline around the HTTP client costs."""
    sender, service = results.limit_sender, _service_run(results, "2 fast")
    if sender is None or service is None:
        return ""
    cpu_ms = service.window.cpu_ms
    return (
        f"Against a bare loop of its own sender ({sender.cpu_ms:.3f} ms per request), the "
        f"service spends {cpu_ms / sender.cpu_ms:.2f}x the CPU per webhook in scenario 2: "
        f"{cpu_ms - sender.cpu_ms:.3f} ms of each webhook goes to Kafka, Postgres, the "
        "pipeline and its bookkeeping."
    )


def _against_slow_sender(results: Results) -> str:
    """Scenario 3's service against its own sender's bare loop on the same slow receivers:
    how much of what the machine allows at that concurrency the service reaches."""
    sender, service = results.slow_sender, _service_run(results, "3 slow")
    if sender is None or service is None:
        return ""
    return (
        f"With slow receivers, a bare loop of the service's own sender at "
        f"{sender.concurrency:,} workers, no Kafka, no Postgres, reaches {sender.rate:,.0f} "
        f"requests/s; the service in scenario 3 delivers {service.window.rate / sender.rate:.2f} "
        "of that."
    )


def _processes_ceiling(results: Results) -> str:
    """Scenario 7's processes against what the machine's cores allow: the whole machine's
    CPU per webhook in the one-process run (service, broker, receivers and the benchmark,
    from ``/proc/stat``, time taken by other guests included) sets how many webhooks a
    second all its cores could carry at that cost."""
    rows = [r for r in results.throughput if r.scenario == "7 fast" and r.window.rate > 0]
    one = next((r for r in rows if r.processes == 1), None)
    cores = os.cpu_count() or 1
    if one is None or math.isnan(one.window.machine_busy) or not one.window.machine_busy:
        return ""
    allowed = cores / one.window.machine_busy
    parts = []
    for row in rows:
        if row.processes < 2:
            continue
        ceiling = min(row.processes, allowed)
        parts.append(
            f"{row.relay.removeprefix('service, ')}: {row.window.rate / one.window.rate:.2f}x one"
            f" process, against the {ceiling:.2f}x the machine allowed at that cost"
            f" ({_machine_ms(row.window):.3f} ms per webhook in that run,"
            f" {_cores(row.window.machine_busy)} busy)"
        )
    if not parts:
        return ""
    return (
        f"Processes: one process kept {_cores(one.window.machine_busy)} busy at"
        f" {one.window.rate:,.0f} webhooks/s, {_machine_ms(one.window):.3f} ms of the whole"
        " machine's CPU per webhook (broker, receivers and the benchmark included); at that"
        f" cost its {cores} cores carry at most {allowed:.2f}x that rate. " + "; ".join(parts) + "."
    )


def _machine_ms(window: Window) -> float:
    """Milliseconds of the whole machine's CPU per webhook over a window."""
    return 1000.0 * window.machine_busy / window.rate


def throughput_lines(results: Results) -> list[str]:
    limit = results.limit
    rows: list[list[str]] = []
    if limit is not None:
        rows.append(_limit_row("1 limit", limit, limit))
        if results.limit_sender is not None:
            rows.append(_limit_row("1 the service's sender", results.limit_sender, limit))
    slow_sender = results.slow_sender
    for row in results.throughput:
        if row.scenario == "3 slow" and slow_sender is not None and limit is not None:
            rows.append(_limit_row("3 slow", slow_sender, limit, row.reference, row.reference_name))
            slow_sender = None  # one row, before the scenario's first
        window = row.window
        cpu_ratio = f"{window.cpu_ms / limit.cpu_ms:.2f}" if limit and window.webhooks else ""
        rows.append(
            [
                row.scenario,
                row.relay,
                f"{window.webhooks:,}",
                _window(window),
                _n(window.rate),
                *_against(window.rate, row.reference, row.reference_name),
                _ms(window.cpu_ms),
                cpu_ratio,
                _cores(window.machine_busy),
                row.note,
            ]
        )
    if not rows:
        return []
    header = (
        "scenario",
        "relay",
        "webhooks",
        "window",
        "webhooks/s",
        "reference",
        "ratio",
        "CPU/webhook",
        "CPU vs limit",
        "machine busy",
        "notes",
    )
    if limit is not None and results.limit_again is not None:
        rows.append(_limit_row("1 limit, again at the end", results.limit_again, limit))
    lines = _table(header, rows)
    drift = _limit_drift(results)
    if drift:
        lines += ["", drift]
    for line in (
        _beyond_sender(results),
        _against_slow_sender(results),
        _processes_ceiling(results),
    ):
        if line:
            lines += ["", line]
    speedups = []
    for scenario in ("2 fast", "3 slow"):
        by_relay = {r.relay: r.window.rate for r in results.throughput if r.scenario == scenario}
        service, naive = by_relay.get("service"), by_relay.get("naive consumer")
        if service and naive:
            speedups.append(f"{scenario} {service / naive:,.1f}x")
    if speedups:
        lines += ["", "The service against the naive consumer: " + ", ".join(speedups) + "."]
    return lines


def latency_lines(results: Results) -> list[str]:
    """Per rate, the service's row, then the Kafka floor's measured beside it (if it ran)."""
    if not results.latency:
        return []
    rows: list[list[str]] = []
    for row in results.latency:
        rows.append(
            _latency_row(
                f"{row.label}, service",
                row.published,
                row.received,
                (row.p50_ms, row.p99_ms, row.max_ms),
                row.cpu_ms,
            )
        )
        if row.floor_received:
            rows.append(
                _latency_row(
                    f"{row.label}, Kafka floor",
                    row.published,
                    row.floor_received,
                    (row.floor_p50_ms, row.floor_p99_ms, row.floor_max_ms),
                    row.floor_cpu_ms,
                )
            )
        if row.hop_received:
            rows.append(
                _latency_row(
                    f"{row.label}, Kafka floor, posted on",
                    row.published,
                    row.hop_received,
                    (row.hop_p50_ms, row.hop_p99_ms, row.hop_max_ms),
                    math.nan,
                )
            )
    header = ("4 latency, rate", "published", "received", "p50", "p99", "max", "CPU/webhook")
    lines = _table(header, rows)
    if any(row.floor_received for row in results.latency):
        lines += [
            "",
            "Kafka floor: a bare aiokafka consumer (`bench/floor.py`) polling events published"
            " at the same rate for the same time, in phases of its own after the service's (the"
            " service stopped), from publication to `getmany` returning the event; its received"
            " are events polled, its CPU is per event polled (and posted on). Posted on: the"
            " same floor POSTing each event's stamp to the receivers as it polls it, through"
            " the service's HTTP client and nothing else; publication to receipt.",
        ]
    return lines


def _latency_row(
    label: str, published: int, received: int, quantiles: tuple[float, float, float], cpu: float
) -> list[str]:
    """One row of the latency table: p50, p99 and max, then CPU per event."""
    return [
        label,
        f"{published:,}",
        f"{received:,}",
        *(_ms(value, 1) for value in quantiles),
        _ms(cpu),
    ]


def backlog_lines(results: Results) -> list[str]:
    if not results.backlog:
        return []
    rows = [
        [
            f"{row.backlog:,}",
            _window(row.window),
            f"{row.window.webhooks:,}",
            _n(row.window.rate),
            f"{row.window.peak_rss_kb / 1024:,.0f} MiB",
            f"{row.window.peak_hwm_kb / 1024:,.0f} MiB",
            _ms(row.window.cpu_ms),
        ]
        for row in results.backlog
    ]
    header = (
        "5 backlog",
        "window",
        "committed",
        "webhooks/s",
        "peak RSS",
        "peak VmHWM",
        "CPU/webhook",
    )
    return _table(header, rows)


def scheduled_lines(results: Results) -> list[str]:
    if not results.scheduled:
        return []
    rows = [
        [
            row.run,
            f"{row.rows:,}",
            f"{row.seconds:.1f} s",
            _n(row.rate),
            _ms(row.service_cpu_ms),
            _ms(row.postgres_cpu_ms),
        ]
        for row in results.scheduled
    ]
    header = ("8 schedule", "rows", "window", "rows/s", "service CPU/row", "Postgres CPU/row")
    return _table(header, rows)


def render(
    results: Results,
    *,
    plan: Plan,
    settings: Settings,
    machine: Machine,
    date: str,
    command: str,
    minutes: float,
    log_level: str,
) -> str:
    lines = [
        f"Run {date}, {plan.name} plan, {minutes:.1f} min. Command: {command}.",
        "",
        f"Machine: {machine.describe()}.",
        f"Versions: {machine.describe_versions()}.",
        f"Service: `python -m consumer run`, default settings (MAX_IN_FLIGHT"
        f" {settings.max_in_flight:,}, MAX_IN_FLIGHT_PER_ENDPOINT"
        f" {settings.max_in_flight_per_endpoint}, MAX_IN_FLIGHT_PER_HOST"
        f" {settings.max_in_flight_per_host}), LOG_LEVEL {log_level}; {plan.codes} tracking codes,"
        f" each signed, each on its own receiver port; {plan.events:,} events over"
        f" {plan.tests:,} test ids in scenarios 2 and 3.",
    ]
    if SERVICE_ROOT != ROOT:
        lines.append(f"Service code: the checkout at `{SERVICE_ROOT}` (BENCH_SERVICE_CHECKOUT).")
    blocks = (
        throughput_lines(results),
        latency_lines(results),
        backlog_lines(results),
        scheduled_lines(results),
    )
    for block in blocks:
        if block:
            lines += ["", *block]
    if results.notes:
        lines += ["", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines)


def write_section(path: Path, quick: bool, body: str) -> None:
    """Replace the run's marked section of ``path`` with ``body`` (appended if unmarked)."""
    begin, end = markers(quick)
    text = path.read_text() if path.exists() else ""
    section = f"{begin}\n<!-- written by `python -m bench`; edits here are lost -->\n{body}\n{end}"
    head, found, rest = text.partition(begin)
    if found and end in rest:
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
