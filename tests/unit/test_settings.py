"""``Settings.from_env``: CONTRACT section 6 defaults, and one clear error per bad setting."""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError
from consumer.settings import Settings, mask_dsn, parse_duration, parse_schedule


def test_defaults_are_the_contract_defaults() -> None:
    """With nothing set, every setting of section 6 has its documented default."""
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/itep_webhooks"
    assert settings.exam_events_topic == "exam-events"
    assert settings.outcomes_topic == "webhook-outcomes"
    assert settings.dead_letter_topic == "exam-events-dlq"
    assert settings.consumer_group == "itep-webhooks"
    assert settings.http_port == 9108
    assert settings.retry_schedule == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert settings.allow_private_endpoints is False
    assert settings.log_format == "json"


def test_environment_overrides_defaults() -> None:
    """Each setting is read from its upper-case environment name."""
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:19092",
            "DATABASE_URL": "postgres://app@db/itep",
            "EXAM_EVENTS_TOPIC": "exam.events",
            "CONSUMER_GROUP": "itep-webhooks-blue",
            "HTTP_PORT": "0",
            "RETRY_SCHEDULE": "250ms, 1m",
            "ALLOW_PRIVATE_ENDPOINTS": "True",
            "LOG_FORMAT": "console",
        }
    )
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:19092"
    assert settings.database_url == "postgres://app@db/itep"
    assert settings.exam_events_topic == "exam.events"
    assert settings.consumer_group == "itep-webhooks-blue"
    assert settings.http_port == 0
    assert settings.retry_schedule == (0.25, 60.0)
    assert settings.allow_private_endpoints is True
    assert settings.log_format == "console"


@pytest.mark.parametrize("text", ["1", "true", "YES", "on", " True "])
def test_true_spellings(text: str) -> None:
    assert Settings.from_env({"ALLOW_PRIVATE_ENDPOINTS": text}).allow_private_endpoints is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off"])
def test_false_spellings(text: str) -> None:
    assert Settings.from_env({"ALLOW_PRIVATE_ENDPOINTS": text}).allow_private_endpoints is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_PORT", "http"),
        ("HTTP_PORT", ""),
        ("HTTP_PORT", "-1"),
        ("HTTP_PORT", "65536"),
        ("HTTP_PORT", "91.08"),
        ("ALLOW_PRIVATE_ENDPOINTS", "maybe"),
        ("ALLOW_PRIVATE_ENDPOINTS", ""),
        ("ALLOW_PRIVATE_ENDPOINTS", "2"),
        ("RETRY_SCHEDULE", "5s,soon"),
        ("RETRY_SCHEDULE", "5s,,5m"),
        ("RETRY_SCHEDULE", "5"),
        ("RETRY_SCHEDULE", "-5s"),
        ("RETRY_SCHEDULE", "5 minutes"),
        ("RETRY_SCHEDULE", "5s;5m"),
        ("LOG_FORMAT", "text"),
        ("LOG_FORMAT", "JSON"),
        ("LOG_FORMAT", ""),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:kafka"),
        ("KAFKA_BOOTSTRAP_SERVERS", ":9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", ""),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,"),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,b"),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:99999"),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:0"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/itep"),
        ("DATABASE_URL", "127.0.0.1:5432"),
        ("DATABASE_URL", ""),
        ("EXAM_EVENTS_TOPIC", "exam events"),
        ("OUTCOMES_TOPIC", ""),
        ("DEAD_LETTER_TOPIC", "dlq/1"),
        ("MAX_IN_FLIGHT", "0"),
        ("HTTP_TOTAL_TIMEOUT", "0s"),
        ("MAX_IN_FLIGHT_PER_ENDPOINT", "0"),
        ("BREAKER_FAILURE_RATIO", "0"),
        ("BREAKER_FAILURE_RATIO", "1.5"),
        ("BREAKER_FAILURE_RATIO", "most"),
        ("BREAKER_MIN_ATTEMPTS", "0"),
        ("BREAKER_WINDOW", "0s"),
        ("BREAKER_COOLDOWN", "soon"),
        ("SCHEDULE_POLL_INTERVAL", "0ms"),
        ("SCHEDULE_LEASE", "500ms"),
        ("KAFKA_METADATA_MAX_AGE", "0s"),
        ("KAFKA_METADATA_MAX_AGE", "300000"),
        ("TOPIC_REPLICATION_FACTOR", "0"),
    ],
)
def test_bad_setting_raises_config_error_naming_it(name: str, value: str) -> None:
    """A malformed setting stops start-up with one line that starts with its name."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.name == name
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_bad_database_url_error_does_not_show_the_password() -> None:
    """The error about a malformed DSN never repeats its credentials."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://app:s3cret-pw@db/itep"})
    assert "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("10h", 36000.0),
        ("1d", 86400.0),
        ("0s", 0.0),
        (" 5 s ", 5.0),
    ],
)
def test_parse_duration_units(text: str, seconds: float) -> None:
    """Durations are a number and one of ms, s, m, h, d."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "-1s", "5S", "1e3s", "5 m 3s", "\u0665s"])
def test_parse_duration_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_empty_retry_schedule_means_no_retries() -> None:
    """An empty ``RETRY_SCHEDULE`` is valid: a failed attempt is final."""
    assert parse_schedule("") == ()
    assert Settings.from_env({"RETRY_SCHEDULE": " "}).retry_schedule == ()


def test_the_breaker_and_schedule_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.max_in_flight_per_endpoint == 100
    assert settings.endpoint_queue_wait == 1.0
    assert (settings.breaker_failure_ratio, settings.breaker_min_attempts) == (0.7, 10)
    assert (settings.breaker_window, settings.breaker_cooldown) == (60.0, 30.0)
    assert (settings.schedule_poll_interval, settings.schedule_lease) == (1.0, 30.0)


def test_cluster_settings() -> None:
    """A list of brokers, the replication factor and the metadata age for a cluster."""
    assert Settings.from_env({}).kafka_metadata_max_age == 300.0
    assert Settings.from_env({}).topic_replication_factor == 1
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094",
            "TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_METADATA_MAX_AGE": "30s",
        }
    )
    assert settings.kafka_bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert settings.topic_replication_factor == 3
    assert settings.kafka_metadata_max_age == 30.0


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        (
            "postgresql://app:s3cr%40t@db.internal:5432/itep",
            "postgresql://app:***@db.internal:5432/itep",
        ),
        ("postgresql://app:p@ss@db/itep", "postgresql://app:***@db/itep"),
        ("postgresql://:s3cret@db/itep", "postgresql://:***@db/itep"),
        (
            "postgresql://db/itep?user=app&password=s3cret&sslmode=require",
            "postgresql://db/itep?user=app&password=***&sslmode=require",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/itep_webhooks",
            "postgresql://postgres@127.0.0.1:5432/itep_webhooks",
        ),
    ],
)
def test_mask_dsn_hides_the_password(dsn: str, masked: str) -> None:
    """The password is replaced by ``***`` wherever the DSN carries it."""
    assert mask_dsn(dsn) == masked


def test_safe_summary_masks_the_database_password() -> None:
    """The start-up summary shows every setting but never the database password."""
    settings = Settings.from_env({"DATABASE_URL": "postgresql://app:s3cret@db:5432/itep"})
    summary = settings.safe_summary()
    assert summary["database_url"] == "postgresql://app:***@db:5432/itep"
    assert "s3cret" not in repr(summary)
    assert summary["http_port"] == 9108
    assert set(summary) == set(Settings.__dataclass_fields__)


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after start-up."""
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.http_port = 1  # type: ignore[misc]
