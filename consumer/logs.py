"""structlog set-up: JSON or console lines, context bound per message, secrets dropped."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

SECRET_KEYS: Final = frozenset(
    {
        "password",
        "token",
        "secret",
        "signing_secret",
        "auth_params",
        "authorization",
        "headers",
        "dsn",
        "database_url",
    }
)


def drop_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace any field whose name says it holds a credential."""
    for key in event_dict.keys() & SECRET_KEYS:
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
