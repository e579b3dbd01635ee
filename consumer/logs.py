"""structlog set-up: JSON or console lines, context bound per message, secrets dropped.

The libraries' own stdlib logging (aiokafka, aiohttp, asyncpg) is rendered the same way, one
JSON line each with its ``logger`` name, and throttled: a message that repeats (aiokafka
logs every reconnect attempt while a broker is down) goes out at most once per
``THROTTLE_SECONDS`` per logger and message, the next one counting how many were held back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from contextvars import Context, ContextVar, copy_context
from typing import Any, Final

import orjson
import structlog

# The event a runner is handling: (test_id, event_id, partition, offset), added to every
# line logged while it does. One variable set once per event (0.2 us): binding the keys
# with ``bind_contextvars`` took 2.2 us an event and 3.6% of a scenario-2 profile, paid on
# every event for lines that mostly never print at info.
_EVENT: Final[ContextVar[tuple[str, str, int, int] | None]] = ContextVar("itep_event", default=None)


def bind_event(test_id: str, event_id: str, partition: int, offset: int) -> None:
    """Put the event in the current context (a runner's own task: it stays there)."""
    _EVENT.set((test_id, event_id, partition, offset))


# The keys bound for one event or scheduled delivery, by ``bind_event`` or by
# ``bound_contextvars`` around a scheduled attempt.
EVENT_KEYS: Final = ("test_id", "event_id", "partition", "offset", "delivery_id")


def detached_context() -> Context:
    """A copy of the current context without the event being handled: for a task started
    while handling one that is not about it. Other bound keys (``worker``) are kept."""
    context = copy_context()
    context.run(_forget_event)
    return context


def _forget_event() -> None:
    _EVENT.set(None)
    structlog.contextvars.unbind_contextvars(*EVENT_KEYS)


def merge_event(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add the bound event's fields; a key given in the call itself wins."""
    bound = _EVENT.get()
    if bound is not None:
        setdefault = event_dict.setdefault
        setdefault("test_id", bound[0])
        setdefault("event_id", bound[1])
        setdefault("partition", bound[2])
        setdefault("offset", bound[3])
    return event_dict


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


THROTTLE_SECONDS: Final = 10.0


class RepeatThrottle(logging.Filter):
    """Let a (logger, message template) through once per ``interval`` seconds; the next one
    let through carries ``suppressed``, the count held back meanwhile."""

    def __init__(
        self, interval: float = THROTTLE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.suppressed = held
        if len(self._last) > 1000:  # templates, not values: a bound that is never reached
            self._last.clear()
        return True


def _json_text(obj: Any, **options: Any) -> str:  # noqa: ANN401 - any event dict
    return orjson.dumps(obj, **options).decode()


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """structlog's lines, and the libraries' stdlib lines, on stderr.

    JSON lines are serialised by orjson and, where stderr has a byte buffer, written to it
    as bytes: a line per delivery at ``info`` is on the hot path.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_text)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    own_renderer: Any = renderer
    logger_factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    stderr_bytes = getattr(sys.stderr, "buffer", None)
    if log_format == "json" and stderr_bytes is not None:
        own_renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory(file=stderr_bytes)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            merge_event,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            structlog.processors.format_exc_info,
            own_renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                merge_event,
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ExtraAdder(allow=("suppressed",)),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                drop_secrets,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(RepeatThrottle())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
