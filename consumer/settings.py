"""Settings from the environment (CONTRACT section 6), each with a default for the local stack.

``Settings.from_env()`` raises ``ConfigError`` naming the first bad setting; the CLI turns it
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from consumer.errors import ConfigError

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", re.ASCII)
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"250ms"``, ``"5s"``, ``"5m"``, ``"2h"``, ``"1d"`` -> seconds."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 250ms, 5s, 5m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_schedule(text: str) -> tuple[float, ...]:
    if not text.strip():
        return ()
    return tuple(parse_duration(part) for part in text.split(","))


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _int(text: str) -> int:
    if not text.strip().isascii() or not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise ValueError(f"{value} must be above 0 and at most 1")
    return value


def _lease(text: str) -> float:
    value = parse_duration(text)
    if value < 1.0:
        raise ValueError(f"{text!r} must be at least 1s (leases are renewed every third of it)")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port")
    return value


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return value


def _bootstrap(text: str) -> str:
    for server in text.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"{server!r} is not host:port")
        if not 0 < int(port) <= 65535:
            raise ValueError(f"{server!r} has no valid TCP port")
    return text


def _dsn(text: str) -> str:
    if urlsplit(text).scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL")
    return text


def _log_format(text: str) -> str:
    if text not in ("json", "console"):
        raise ValueError(f"{text!r} is not json or console")
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"{text!r} is not debug, info, warning or error")
    return level


def _tracking_code_ttl(text: str) -> float:
    value = _positive_duration(text)
    if value > 5.0:
        raise ValueError("must be at most 5s: a tracking-code change takes effect within 5 s")
    return value


def _topic(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", text):
        raise ValueError(f"{text!r} is not a valid Kafka topic name")
    return text


# name -> (environment default, parser); the field of Settings is the lower-case name.
_SPEC: Final[Mapping[str, tuple[str, Callable[[str], Any]]]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("127.0.0.1:9092", _bootstrap),
    "DATABASE_URL": ("postgresql://postgres@127.0.0.1:5432/itep_webhooks", _dsn),
    "EXAM_EVENTS_TOPIC": ("exam-events", _topic),
    "OUTCOMES_TOPIC": ("webhook-outcomes", _topic),
    "DEAD_LETTER_TOPIC": ("exam-events-dlq", _topic),
    "CONSUMER_GROUP": ("itep-webhooks", _non_empty),
    "HTTP_PORT": ("9108", _port),
    "RETRY_SCHEDULE": ("5s,5m,30m,2h,5h,10h,10h", parse_schedule),
    "ALLOW_PRIVATE_ENDPOINTS": ("false", _bool),
    "LOG_FORMAT": ("json", _log_format),
    "LOG_LEVEL": ("info", _log_level),
    "MAX_IN_FLIGHT": ("1000", _positive_int),
    "MAX_IN_FLIGHT_PER_HOST": ("100", _positive_int),
    "MAX_UNCOMMITTED_PER_PARTITION": ("50000", _positive_int),
    "HTTP_CONNECT_TIMEOUT": ("5s", _positive_duration),
    "HTTP_TOTAL_TIMEOUT": ("15s", _positive_duration),
    "MAX_RESPONSE_BYTES": ("65536", _positive_int),
    "MAX_IN_FLIGHT_PER_ENDPOINT": ("100", _positive_int),
    "ENDPOINT_QUEUE_WAIT": ("1s", parse_duration),
    "BREAKER_FAILURE_RATIO": ("0.7", _ratio),
    "BREAKER_MIN_ATTEMPTS": ("10", _positive_int),
    "BREAKER_WINDOW": ("60s", _positive_duration),
    "BREAKER_COOLDOWN": ("30s", _positive_duration),
    "SCHEDULE_POLL_INTERVAL": ("1s", _positive_duration),
    "SCHEDULE_LEASE": ("30s", _lease),
    "COMMIT_INTERVAL": ("1s", _positive_duration),
    "DRAIN_TIMEOUT": ("30s", _positive_duration),
    "TRACKING_CODE_TTL": ("4s", _tracking_code_ttl),
    "TOPIC_PARTITIONS": ("6", _positive_int),
    "TOPIC_REPLICATION_FACTOR": ("1", _positive_int),
    "KAFKA_METADATA_MAX_AGE": ("5m", _positive_duration),
    "PROCESSES": ("1", _positive_int),
}


@dataclass(frozen=True, slots=True)
class Settings:
    kafka_bootstrap_servers: str
    database_url: str
    exam_events_topic: str
    outcomes_topic: str
    dead_letter_topic: str
    consumer_group: str
    http_port: int
    retry_schedule: tuple[float, ...]
    allow_private_endpoints: bool
    log_format: str
    log_level: str
    max_in_flight: int
    max_in_flight_per_host: int
    max_uncommitted_per_partition: int
    http_connect_timeout: float
    http_total_timeout: float
    max_response_bytes: int
    max_in_flight_per_endpoint: int
    endpoint_queue_wait: float
    breaker_failure_ratio: float
    breaker_min_attempts: int
    breaker_window: float
    breaker_cooldown: float
    schedule_poll_interval: float
    schedule_lease: float
    commit_interval: float
    drain_timeout: float
    tracking_code_ttl: float
    topic_partitions: int
    topic_replication_factor: int
    kafka_metadata_max_age: float
    processes: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for name, (default, parse) in _SPEC.items():
            raw = environ.get(name, default)
            try:
                values[name.lower()] = parse(raw)
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None
        return cls(**values)

    def safe_summary(self) -> dict[str, object]:
        """The settings for a start-up log line, with the database password masked."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["database_url"] = mask_dsn(self.database_url)
        return out


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password, in the user info or a ``password=`` parameter, as ``***``."""
    parts = urlsplit(dsn)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    netloc = f"{user}:***@{hostinfo}" if at and colon else parts.netloc
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = parts.query
    if any(name == "password" for name, _ in pairs):
        masked = [(name, "***" if name == "password" else value) for name, value in pairs]
        query = urlencode(masked, safe="*")
    return parts._replace(netloc=netloc, query=query).geturl()
