"""``python -m bench``: the service's throughput, latency and memory against references
measured in the same run (``make bench``; ``make bench QUICK=1`` for ``--quick``).

Scenarios (``--only`` takes their names, comma-separated): ``limit``, ``fast``,
``faststream``, ``naive``, ``slow``, ``latency``, ``backlog``, ``scaling`` (or one of its
halves: ``inflight``, ``processes``), ``schedule``. The limit runs whenever a chosen scenario
needs it as a reference, and once more at the end of the run, so that the tables show how far the
machine drifted while it ran. A full or quick run of every scenario writes its tables into
BENCHMARKS.md (its own marked section each); a partial run (``--only``, ``--events``) only
prints them unless ``--write``; ``--no-write`` never writes.
Logs of every process go to ``.local/bench/<time>/``. The service runs with its default
``LOG_LEVEL`` (``info``); ``BENCH_LOG_LEVEL=warning`` measures it with fewer log lines.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import uvloop

from bench import report
from bench.context import Context
from bench.machine import describe_machine
from bench.plan import FULL, QUICK, Plan
from bench.scenarios import backlog, fast, latency, limit, scaling, schedule, slow
from bench.stack import LOG_DIR, ROOT, Kafka, processes_flag_supported, remove_tracking_codes
from bench.workload import BENCH_PREFIX, service_log_level
from consumer.settings import Settings

SCENARIOS = (
    "limit",
    "fast",
    "faststream",
    "naive",
    "slow",
    "latency",
    "backlog",
    "scaling",
    "schedule",
)
SCALING_HALVES = ("inflight", "processes")
NEED_LIMIT = frozenset({"fast", "faststream", "naive", "slow", "scaling", *SCALING_HALVES})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="a small run of every scenario")
    parser.add_argument(
        "--only",
        help=f"comma-separated, of: {', '.join(SCENARIOS + SCALING_HALVES)}",
    )
    parser.add_argument("--events", type=int, help="events in scenarios 2 and 3")
    parser.add_argument(
        "--backlogs", help="comma-separated backlog sizes of scenario 5 (e.g. 1000000)"
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write BENCHMARKS.md (default: only for a run of every scenario at plan sizes)",
    )
    return parser


def _command(args: argparse.Namespace) -> str:
    direct = shlex.join([".venv/bin/python", "-m", "bench", *sys.argv[1:]])
    via = os.environ.get("BENCH_COMMAND")
    return f"`{via}` (`{direct}`)" if via else f"`{direct}`"


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.events:
        plan = plan.with_events(args.events)
    if args.backlogs:
        plan = replace(plan, backlogs=tuple(int(size) for size in args.backlogs.split(",")))
    return plan


Step = tuple[str, Callable[[], Awaitable[None]]]


def _steps(ctx: Context, chosen: list[str]) -> list[Step]:
    """The scenarios of ``chosen`` in order, each a title and what runs it."""
    steps: list[Step] = []

    async def run_limit() -> None:
        ctx.results.limit = await limit.run(ctx)

    async def run_limit_sender() -> None:
        ctx.results.limit_sender = await limit.run(ctx, client="sender")

    with_limit = "limit" in chosen or bool(NEED_LIMIT.intersection(chosen))
    if with_limit:
        steps.append(("1 limit", run_limit))
    if "limit" in chosen or "fast" in chosen:
        steps.append(("1 the service's sender", run_limit_sender))
    if {"fast", "faststream", "naive"}.intersection(chosen):
        steps.append(
            (
                "2 fast receivers",
                lambda: fast.run(
                    ctx,
                    service="fast" in chosen,
                    faststream="faststream" in chosen,
                    naive="naive" in chosen,
                ),
            )
        )
    if {"slow", "naive"}.intersection(chosen):
        steps.append(
            (
                "3 slow receivers",
                lambda: slow.run(ctx, service="slow" in chosen, naive="naive" in chosen),
            )
        )
    if "latency" in chosen:
        steps.append(("4 latency", lambda: latency.run(ctx)))
    if "backlog" in chosen:
        steps.append(("5 backlog", lambda: backlog.run(ctx)))
    halves = set(SCALING_HALVES).intersection(chosen)
    if "scaling" in chosen or halves:
        both = "scaling" in chosen
        steps.append(
            (
                "7 scaling",
                lambda: scaling.run(
                    ctx,
                    in_flight=both or "inflight" in halves,
                    processes=both or "processes" in halves,
                ),
            )
        )
    if "schedule" in chosen:
        steps.append(("8 schedule", lambda: schedule.run(ctx)))
    if with_limit and len(steps) > 1:
        # The same reference once more after everything else: how far the machine
        # itself drifted over the run, beside the ratios taken against the first.
        async def run_limit_again() -> None:
            ctx.results.limit_again = await limit.run(ctx)

        steps.append(("1 limit, again", run_limit_again))
    return steps


async def _run(args: argparse.Namespace, chosen: list[str]) -> int:
    plan = _plan(args)
    settings = Settings.from_env(os.environ)
    started_at = datetime.now(UTC)
    log_dir = LOG_DIR / started_at.strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    machine = await describe_machine(settings.database_url)
    print(f"itep-webhooks benchmark, {plan.name} plan: {', '.join(chosen)}")
    print(f"machine: {machine.describe()}\nversions: {machine.describe_versions()}")
    print(f"process logs: {log_dir.relative_to(ROOT)}", flush=True)
    # A run that was killed leaves its codes and schedule rows behind (``BENCH-`` codes):
    # pending rows of another run would make every claim of scenario 8 walk past them.
    rows, codes = await remove_tracking_codes(settings.database_url, BENCH_PREFIX)
    if rows or codes:
        print(f"removed what an earlier run left: {rows:,} schedule rows, {codes:,} codes")
    failed = False
    async with Kafka(settings.kafka_bootstrap_servers) as kafka:
        ctx = Context(
            plan=plan,
            settings=settings,
            kafka=kafka,
            log_dir=log_dir,
            processes_flag=await processes_flag_supported(),
        )
        steps = _steps(ctx, chosen)
        for title, step in steps:
            print(f"== {title}", flush=True)
            began = time.monotonic()
            try:
                await step()
            # A failed scenario is reported and the others still run: a long run keeps
            # what it measured. The exit status says that something failed.
            except Exception as exc:  # noqa: BLE001
                failed = True
                traceback.print_exc()
                ctx.results.notes.append(f"{title} failed: {type(exc).__name__}: {exc}")
            print(f"   {title}: {time.monotonic() - began:.0f} s", flush=True)
    minutes = (time.monotonic() - ctx.started) / 60
    text = report.render(
        ctx.results,
        plan=plan,
        settings=settings,
        machine=machine,
        date=started_at.strftime("%Y-%m-%d %H:%M UTC"),
        command=_command(args),
        minutes=minutes,
        log_level=service_log_level(),
    )
    print("\n" + text)
    complete = args.only is None and args.events is None and not args.backlogs and not failed
    if args.write or (args.write is None and complete):
        path = ROOT / "BENCHMARKS.md"
        report.write_section(path, args.quick, text)
        section = " ".join(report.markers(args.quick))
        print(f"\nwritten to {path.relative_to(ROOT)} ({section})")
    else:
        print("\nnot written to BENCHMARKS.md (partial or failed run; --write forces it)")
    return 1 if failed else 0


def main() -> int:
    args = _parser().parse_args()
    chosen = list(SCENARIOS)
    if args.only:
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(SCENARIOS + SCALING_HALVES))
        if unknown:
            print(f"python -m bench: unknown scenario {', '.join(unknown)}", file=sys.stderr)
            return 2
    return uvloop.run(_run(args, chosen))


if __name__ == "__main__":
    sys.exit(main())
