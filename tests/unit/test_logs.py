"""Log lines never carry credentials; libraries' lines are JSON too, and throttled."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
import structlog

from consumer.logs import (
    EVENT_KEYS,
    RepeatThrottle,
    bind_event,
    configure_logging,
    detached_context,
    drop_secrets,
)


def test_fields_named_for_credentials_are_redacted() -> None:
    event = {
        "event": "x",
        "password": "p",
        "token": "t",
        "authorization": "Basic abc",
        "database_url": "postgresql://u:p@h/db",
        "endpoint_host": "hooks.example.edu",
    }
    out = drop_secrets(None, "info", event)
    assert {k: v for k, v in out.items() if v == "[redacted]"}.keys() == {
        "password",
        "token",
        "authorization",
        "database_url",
    }
    assert out["endpoint_host"] == "hooks.example.edu"


def record(msg: str, *args: object, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_library_message_goes_out_once_per_interval_with_the_count_held() -> None:
    """The same logger and template pass once per interval, whatever the arguments; the next
    one let through says how many were held back."""
    now = [0.0]
    throttle = RepeatThrottle(interval=10, clock=lambda: now[0])
    assert throttle.filter(record("Unable connect to %s", "a:1"))
    assert not throttle.filter(record("Unable connect to %s", "b:2"))
    assert throttle.filter(record("Unable connect to %s", "a:1", name="aiohttp"))
    assert throttle.filter(record("Another message"))
    now[0] = 10.0
    again = record("Unable connect to %s", "a:1")
    assert throttle.filter(again)
    assert again.suppressed == 1  # type: ignore[attr-defined]


def test_library_logging_comes_out_as_json_lines_with_the_logger_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """aiokafka's stdlib records are rendered like the service's own lines."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "info")
        logging.getLogger("aiokafka").error("Unable connect to %s", "127.0.0.1:9092")
        logging.getLogger("aiokafka").info("below the level")
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        structlog.reset_defaults()
    [line] = capsys.readouterr().err.splitlines()
    doc = orjson.loads(line)
    assert doc["logger"] == "aiokafka"
    assert doc["level"] == "error"
    assert doc["event"] == "Unable connect to 127.0.0.1:9092"
    assert "timestamp" in doc


async def test_a_line_logged_while_an_event_is_handled_carries_the_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bound in the runner's own task: its lines name the event (a key given in the call
    wins), and a line from elsewhere names none."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log = structlog.get_logger("test")

    async def runner() -> None:
        bind_event("T1", "E1", 3, 42)
        log.warning("inside", offset=7)

    try:
        configure_logging("json", "info")
        await asyncio.create_task(runner())
        log.warning("outside")
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        structlog.reset_defaults()
    inside, outside = (orjson.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (inside["event"], inside["test_id"], inside["event_id"]) == ("inside", "T1", "E1")
    assert (inside["partition"], inside["offset"]) == (3, 7)
    assert outside["event"] == "outside"
    assert not {"test_id", "event_id", "partition", "offset"} & outside.keys()


async def test_a_task_started_in_a_detached_context_names_no_event_but_keeps_the_worker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Work started while handling an event that is not about it (holding a code's
    deliveries when its breaker opens) logs without the event's keys."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log = structlog.get_logger("test")

    async def other() -> None:
        log.warning("detached")

    async def runner() -> None:
        structlog.contextvars.bind_contextvars(worker=1)
        bind_event("T1", "E1", 3, 42)
        with structlog.contextvars.bound_contextvars(delivery_id=9, event_id="E2"):
            await asyncio.create_task(other(), context=detached_context())
            log.warning("attached")

    try:
        configure_logging("json", "info")
        await asyncio.create_task(runner())
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        structlog.reset_defaults()
    detached, attached = (orjson.loads(line) for line in capsys.readouterr().err.splitlines())
    assert detached["event"] == "detached"
    assert detached["worker"] == 1
    assert not set(EVENT_KEYS) & detached.keys()
    assert (attached["event_id"], attached["delivery_id"], attached["test_id"]) == ("E2", 9, "T1")
