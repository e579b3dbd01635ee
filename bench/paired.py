"""Two versions of the service side by side: CPU per webhook of each, drained at the same time.

Run as ``python -m bench.paired --events 150000 --rounds 3 old=<checkout> new=<checkout>``
(a checkout is a directory holding the service's code, a ``git worktree`` of a commit, say;
``.`` is this one). Each round starts one process per version; each publishes its own copy
of scenario 2's events (fast receivers, 20 codes) and drains them with that version of the
service, both at once. Both see the same machine at the same moment, so the ratio within a
round holds when the machine's speed moves, which back-to-back runs on a shared machine do
not give. The two share the cores, so each one's CPU per webhook is higher than alone: only
the ratios count, and only beyond the noise: two copies of one version gave 0.95-1.02 (nine
rounds in three runs). The two take turns starting first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from bench.context import Context
from bench.plan import FULL
from bench.stack import LOG_DIR, Kafka
from bench.workload import Workload
from consumer.settings import Settings

PROGRAM = (sys.executable, "-m", "bench.paired")


@dataclass(frozen=True, slots=True)
class Drain:
    label: str
    cpu_ms: float
    rate: float


async def drain_once(label: str, log_dir: Path, events: int) -> Drain:
    """The version under ``BENCH_SERVICE_CHECKOUT`` drains its own ``events``: its CPU per
    webhook and webhooks per second."""
    settings = Settings.from_env(os.environ)
    plan = FULL.with_events(events)
    async with Kafka(settings.kafka_bootstrap_servers) as kafka:
        ctx = Context(
            plan=plan, settings=settings, kafka=kafka, log_dir=log_dir, processes_flag=True
        )
        async with Workload(ctx, "fast", delay=0.0) as work:
            await work.publish(events)
            window, _ = await work.drain_with_service(events, plan.drain_cap)
    return Drain(label, window.cpu_ms, window.rate)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child's label: its own drain
    parser.add_argument("versions", nargs="*", help="LABEL=PATH, two of them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.one:
        label = args.one
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        log_dir = LOG_DIR / f"paired-{stamp}-{os.getpid()}"
        log_dir.mkdir(parents=True)
        drain = uvloop.run(drain_once(label, log_dir, args.events))
        # The last line is the result; the benchmark's progress lines come before it.
        print(f"{drain.label} {drain.cpu_ms:.4f} {drain.rate:.0f}")
        return 0
    if len(args.versions) != 2 or not all("=" in v for v in args.versions):
        print("python -m bench.paired: give two versions as LABEL=PATH", file=sys.stderr)
        return 2
    versions = [tuple(version.split("=", 1)) for version in args.versions]
    labels = [label for label, _ in versions]
    if labels[0] == labels[1]:
        print("python -m bench.paired: the two versions need different labels", file=sys.stderr)
        return 2
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            # Each child's output to a file: a pipe read one child after the other could
            # fill and stall the second while the first runs.
            outs = [Path(tmp) / f"{n}.out" for n in range(2)]
            children = []
            # So that any edge of starting first or second falls on both, they take turns.
            order = versions if number % 2 else versions[::-1]
            for (label, path), out in zip(order, outs, strict=True):
                with out.open("w") as sink:
                    children.append(
                        subprocess.Popen(  # noqa: S603 - this module, the caller's own arguments
                            [*PROGRAM, "--events", str(args.events), "--one", label],
                            env={**os.environ, "BENCH_SERVICE_CHECKOUT": str(Path(path).resolve())},
                            stdout=sink,
                        )
                    )
            codes = [child.wait() for child in children]
            outputs = [(out.read_text().strip().splitlines() or [""])[-1].split() for out in outs]
        if any(codes) or any(len(out) != 3 for out in outputs):
            print(f"round {number}: a drain failed", file=sys.stderr)
            return 1
        by_label = {label: (float(cpu), rate) for label, cpu, rate in outputs}
        (cpu_a, rate_a), (cpu_b, rate_b) = by_label[labels[0]], by_label[labels[1]]
        first = order[0][0]
        print(
            f"round {number}: {labels[0]} {cpu_a:.4f} ms ({rate_a}/s),"
            f" {labels[1]} {cpu_b:.4f} ms ({rate_b}/s):"
            f" {labels[1]} / {labels[0]} = {cpu_b / cpu_a:.2f} ({first} started first)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
