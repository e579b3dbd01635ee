"""``itep-webhooks``: run the consumer, apply migrations, keep the tracking codes, read outcomes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import uvloop

from consumer import __version__
from consumer.admin import deliveries as deliveries_admin
from consumer.admin import outcomes as outcomes_admin
from consumer.admin import tracking_codes as tracking_admin
from consumer.admin.migrate import apply_migrations
from consumer.errors import ConfigError, ItepWebhooksError
from consumer.logs import configure_logging
from consumer.processes.supervisor import Supervisor
from consumer.processes.worker import WorkerPlace, run_worker
from consumer.service import run_service
from consumer.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itep-webhooks",
        description="Relay iTEP exam-state events from Kafka to partner webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"itep-webhooks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run the consumer service (settings from the environment)"
    )
    run.add_argument(
        "--processes",
        type=_process_count,
        metavar="N",
        help="run N consumer processes in one group, one per core (default: PROCESSES, 1)",
    )
    # How the supervisor of --processes starts each worker; not for people.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    run.add_argument("--http-fd", type=int, help=argparse.SUPPRESS)
    commands.add_parser("migrate", help="apply pending sql/ migrations to DATABASE_URL")
    tracking_admin.register(commands)
    deliveries_admin.register(commands)
    outcomes_admin.register(commands)
    return parser


def _process_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    return uvloop.run(coro)


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """One service; or, with more than one process, a supervisor and its workers."""
    if args.worker is not None:
        await run_worker(settings, WorkerPlace(args.worker, args.parent_pid, args.http_fd))
        return 0
    processes = args.processes or settings.processes
    if processes > 1:
        return await Supervisor(settings, processes).run()
    await run_service(settings)
    return 0


async def _migrate(settings: Settings) -> int:
    applied = await apply_migrations(settings.database_url)
    for name in applied:
        print(f"applied {name}")
    print(f"{len(applied)} migration(s) applied")
    return 0


def _run_outcomes(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _run_async(outcomes_admin.run(args, settings))
    except KeyboardInterrupt:
        return 130  # Ctrl-C is how a tail ends: the consumer is closed, no traceback


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"itep-webhooks: bad setting {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        if args.command == "run":
            return _run_async(_serve(args, settings))
        if args.command == "migrate":
            return _run_async(_migrate(settings))
        if args.command == "deliveries":
            return _run_async(deliveries_admin.run(args, settings.database_url))
        if args.command == "outcomes":
            return _run_outcomes(args, settings)
        return _run_async(tracking_admin.run(args, settings.database_url))
    except ConfigError as exc:
        print(f"itep-webhooks: bad setting {exc}", file=sys.stderr)
        return 2
    except ItepWebhooksError as exc:
        print(f"itep-webhooks: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
