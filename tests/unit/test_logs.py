"""Log lines never carry credentials; libraries' lines are JSON too, and throttled."""

from __future__ import annotations

import logging

import orjson
import pytest
import structlog

from consumer.logs import RepeatThrottle, configure_logging, drop_secrets


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
