"""``itep-webhooks`` as an operator runs it: a real process, its exit status and its lines."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

pytestmark = pytest.mark.integration


async def run_cli(*args: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("name", "value"),
    [("HTTP_PORT", "abc"), ("RETRY_SCHEDULE", "5x"), ("LOG_FORMAT", "xml"), ("CONSUMER_GROUP", "")],
)
async def test_a_bad_setting_stops_start_up_with_one_line(name: str, value: str) -> None:
    """Exit status 2 and exactly one line on stderr, naming the setting."""
    code, _, err = await run_cli("run", **{name: value})
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"itep-webhooks: bad setting {name}: ")


async def test_a_database_that_does_not_exist_is_a_bad_setting() -> None:
    """DATABASE_URL naming no database stops start-up before anything is consumed."""
    url = "postgresql://postgres@127.0.0.1:5432/no_such_database_here"
    code, _, err = await run_cli(
        "run",
        DATABASE_URL=url,
        HTTP_PORT="0",
        LOG_LEVEL="error",
        EXAM_EVENTS_TOPIC="test-cli-events",
        OUTCOMES_TOPIC="test-cli-outcomes",
        DEAD_LETTER_TOPIC="test-cli-dlq",
    )
    assert code == 2
    assert "bad setting DATABASE_URL" in err
    assert "no_such_database_here" in err


async def test_more_replicas_than_the_cluster_has_brokers_stops_start_up_with_one_line(
    kafka_bootstrap: str,
) -> None:
    """TOPIC_REPLICATION_FACTOR=3 against the one-broker stack: exit status 2 and exactly one
    line on stderr naming the setting and the cluster; no topic is created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()
    if brokers >= 3:
        pytest.skip(f"KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap} has {brokers} brokers, not one")
    suffix = uuid.uuid4().hex
    topics = [f"test-cli-rf-{name}-{suffix}" for name in ("events", "outcomes", "dlq")]
    code, _, err = await run_cli(
        "run",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        TOPIC_REPLICATION_FACTOR="3",
        HTTP_PORT="0",
        LOG_LEVEL="error",
        EXAM_EVENTS_TOPIC=topics[0],
        OUTCOMES_TOPIC=topics[1],
        DEAD_LETTER_TOPIC=topics[2],
    )
    assert code == 2, err
    assert err.count("\n") == 1, err
    noun = "broker" if brokers == 1 else "brokers"
    assert err.startswith("itep-webhooks: bad setting TOPIC_REPLICATION_FACTOR: "), err
    assert err.rstrip("\n").endswith(f"the cluster at {kafka_bootstrap} has {brokers} {noun}")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert not set(topics) & set(await admin.list_topics())
    finally:
        await admin.close()


async def test_migrate_applies_then_finds_nothing_to_do(empty_database_url: str) -> None:
    """`itep-webhooks migrate` twice: the first applies, the second applies nothing."""
    first = await run_cli("migrate", DATABASE_URL=empty_database_url, LOG_LEVEL="error")
    second = await run_cli("migrate", DATABASE_URL=empty_database_url, LOG_LEVEL="error")
    assert first[0] == second[0] == 0
    assert "applied 001_tracking_codes" in first[1]
    assert "applied 002_scheduled_deliveries" in first[1]
    assert second[1].strip() == "0 migration(s) applied"
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 2
    finally:
        await conn.close()


async def test_the_database_password_never_reaches_the_logs() -> None:
    """The start-up line lists every setting, with the DSN's password masked."""
    url = "postgresql://postgres:pw-s3cr3t-x@127.0.0.1:5432/itep_webhooks"
    code, out, err = await run_cli(
        "run",
        DATABASE_URL=url,
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        HTTP_PORT="0",
        LOG_FORMAT="json",
    )
    assert code == 1
    assert "service_starting" in err
    assert "cannot start: Kafka" in err
    assert "pw-s3cr3t-x" not in out + err
