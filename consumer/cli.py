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
from consumer.service import run_service
from consumer.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itep-webhooks",
        description="Relay iTEP exam-state events from Kafka to partner webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"itep-webhooks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the consumer service (settings from the environment)")
    commands.add_parser("migrate", help="apply pending sql/ migrations to DATABASE_URL")
    tracking_admin.register(commands)
    deliveries_admin.register(commands)
    outcomes_admin.register(commands)
    return parser


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    return uvloop.run(coro)


async def _serve(settings: Settings) -> int:
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
            return _run_async(_serve(settings))
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
