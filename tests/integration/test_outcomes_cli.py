"""``itep-webhooks outcomes tail|summary`` against the real Kafka broker: outcome records published
to a fresh topic with chosen timestamps, then followed, filtered and summarised; an unreachable
broker is exit 1 with one line, bad input exit 2 naming the flag."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from consumer.admin import outcomes as outcomes_admin
from consumer.outcomes import Outcome, OutcomeRecord, format_timestamp
from consumer.settings import Settings
from tests.integration.harness import free_port

pytestmark = pytest.mark.integration

_events = itertools.count()


def record(outcome: str = "delivered", **fields: Any) -> OutcomeRecord:
    """An outcome record as the service writes it; ``fields`` override the defaults."""
    number = next(_events)
    values: dict[str, Any] = {
        "event_id": f"evt-{number}",
        "test_id": f"T{number}",
        "oid": f"crm-{number}",
        "tracking_code": "ACME",
        "trigger": "completed",
        "exam_status": "Complete",
        "outcome": Outcome(outcome),
        "reason": None if outcome == "delivered" else "http_503",
        "attempt": 1,
        "http_status": 200 if outcome == "delivered" else 503,
        "latency_ms": 12.5,
        "endpoint_host": "hooks.example.edu",
        "event_occurred_at": "2026-12-02T07:00:00Z",
        "recorded_at": format_timestamp(datetime.now(UTC)),
        "next_attempt_at": None,
    }
    values.update(fields)
    return OutcomeRecord(**values)


async def publish(
    bootstrap: str, topic: str, records: list[OutcomeRecord | bytes], age: timedelta | None = None
) -> None:
    """Publish records keyed by test id (raw bytes unkeyed), stamped ``age`` ago (or now)."""
    stamp = None if age is None else int((datetime.now(UTC) - age).timestamp() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for item in records:
            if isinstance(item, bytes):
                await producer.send(topic, value=item, timestamp_ms=stamp)
            else:
                await producer.send(topic, value=item.to_json(), key=item.key, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="itep-webhooks")
    commands = parser.add_subparsers(dest="command", required=True)
    outcomes_admin.register(commands)
    return parser.parse_args(argv)


@pytest.fixture
async def topic(new_topic: Any) -> str:
    return str(await new_topic(partitions=3, prefix="test-outcomes"))


@pytest.fixture
def cli(kafka_bootstrap: str, topic: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run one ``outcomes`` command line in this process; return (status, stdout, stderr)."""
    settings = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "OUTCOMES_TOPIC": topic}
    )

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # only this command's output
        async with asyncio.timeout(30) as deadline:
            status = await outcomes_admin.run(parse(["outcomes", *argv]), settings)
        assert not deadline.expired(), "the command did not end in time"
        out, err = capsys.readouterr()
        return status, out, err

    return run


async def start_cli(*args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "outcomes",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(*args: str, **env: str) -> tuple[int, str, str]:
    """``python -m consumer outcomes ...`` as an operator runs it."""
    process = await start_cli(*args, **env)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def table(out: str) -> dict[str, list[str]]:
    """The summary's rows by group name, each the cells after the name."""
    lines = out.splitlines()
    assert lines[1].split()[1:] == [
        "DELIVERED",
        "FAILED",
        "SKIPPED",
        "REJECTED",
        "RETRIES",
        "SUCCESS",
        "P50_MS",
        "P99_MS",
    ]
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}


def event_ids(out: str) -> list[str]:
    """The event ids of ``tail``'s readable lines, in order."""
    return [
        field.removeprefix("event=")
        for line in out.splitlines()
        for field in line.split()
        if field.startswith("event=")
    ]


# ---------------------------------------------------------------------------------------- tail


async def test_tail_json_prints_each_record_as_it_is_on_the_topic(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """``--json --from-beginning``: the exact record bytes, one a line, then idle -> exit 0."""
    records = [record("delivered"), record("failed", reason="http_404"), record("skipped")]
    await publish(kafka_bootstrap, topic, list(records))

    status, out, err = await cli("tail", "--from-beginning", "--json", "--timeout", "1s")

    assert status == 0
    assert sorted(out.splitlines()) == sorted(r.to_json().decode() for r in records)
    assert f"following {topic} from the beginning (3 partitions)" in err


async def test_tail_prints_one_readable_line_per_record(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """A line carries time, outcome, reason, code, test id, event id, attempt, status, latency."""
    failed = record("failed", reason="http_404", http_status=404, attempt=2, latency_ms=8.25)
    await publish(kafka_bootstrap, topic, [failed])

    status, out, _ = await cli("tail", "--from-beginning", "--timeout", "1s")

    assert status == 0
    assert out.splitlines() == [
        f"{failed.recorded_at} failed          reason=http_404 code=ACME test={failed.test_id} "
        f"event={failed.event_id} attempt=2 http=404 latency=8.2ms"
    ]


async def test_tail_filters_by_code_test_id_and_outcome(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """Repeated values of a selector are alternatives; different selectors must all match."""
    a_failed = record("failed", tracking_code="A")
    b_failed = record("failed", tracking_code="B")
    b_skipped = record("skipped", tracking_code="B")
    c_failed = record("failed", tracking_code="C")
    a_delivered = record("delivered", tracking_code="A")
    await publish(kafka_bootstrap, topic, [a_failed, b_failed, b_skipped, c_failed, a_delivered])

    status, out, _ = await cli(
        "tail",
        "--from-beginning",
        "--timeout",
        "1s",
        "--tracking-code",
        "A",
        "--tracking-code",
        "B",
        "--outcome",
        "failed",
        "--outcome",
        "skipped",
    )
    assert status == 0
    assert sorted(event_ids(out)) == sorted(
        [a_failed.event_id, b_failed.event_id, b_skipped.event_id]
    )

    status, out, _ = await cli(
        "tail", "--from-beginning", "--timeout", "1s", "--test-id", str(c_failed.test_id)
    )
    assert status == 0
    assert event_ids(out) == [c_failed.event_id]


async def test_tail_stops_after_limit_records(cli: Any, kafka_bootstrap: str, topic: str) -> None:
    """``--limit 2`` with five matching records prints two and exits 0 without a timeout."""
    await publish(kafka_bootstrap, topic, [record(test_id="same") for _ in range(5)])

    status, out, _ = await cli("tail", "--from-beginning", "--limit", "2")

    assert status == 0
    assert len(out.splitlines()) == 2


async def test_tail_starts_with_new_records_by_default(kafka_bootstrap: str, topic: str) -> None:
    """Without a start flag, a record published before the command is not shown; one after is."""
    old, new = record(), record()
    await publish(kafka_bootstrap, topic, [old])
    process = await start_cli(
        "tail",
        "--json",
        "--limit",
        "1",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        OUTCOMES_TOPIC=topic,
    )
    try:
        assert process.stderr is not None
        first = await asyncio.wait_for(process.stderr.readline(), 30)
        assert b"from the end" in first
        await publish(kafka_bootstrap, topic, [new])
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert out.decode().splitlines() == [new.to_json().decode()]


async def test_tail_since_starts_at_records_published_since_then(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """``--since 1h``: a record stamped 3 hours ago is left out, one of 10 minutes ago shown."""
    old, recent = record(), record()
    await publish(kafka_bootstrap, topic, [old], age=timedelta(hours=3))
    await publish(kafka_bootstrap, topic, [recent], age=timedelta(minutes=10))

    status, out, err = await cli("tail", "--since", "1h", "--timeout", "1s")

    assert status == 0
    assert event_ids(out) == [recent.event_id]
    assert "since 20" in err


# ------------------------------------------------------------------------------------- summary


async def publish_window(bootstrap: str, topic: str) -> None:
    """3h ago: 5 delivered of OLD; 1h ago: ACME 2 delivered, 1 failed, 2 retries, 1 skipped,
    BETA 1 rejected; 5 minutes ago: ACME 1 delivered."""
    await publish(
        bootstrap, topic, [record(tracking_code="OLD") for _ in range(5)], timedelta(hours=3)
    )
    await publish(
        bootstrap,
        topic,
        [
            record("retry_scheduled", latency_ms=1000.0, reason="http_503"),
            record("retry_scheduled", latency_ms=2000.0, reason="timeout", trigger="reset"),
            record("delivered", latency_ms=10.0),
            record("delivered", latency_ms=20.0, trigger="reset"),
            record("failed", latency_ms=30.0, reason="http_404"),
            record("skipped", latency_ms=None, http_status=None, reason="inactive_tracking_code"),
            record(
                "rejected",
                tracking_code="BETA",
                trigger=None,
                latency_ms=None,
                http_status=None,
                reason="invalid_event",
            ),
        ],
        timedelta(hours=1),
    )
    await publish(bootstrap, topic, [record(latency_ms=40.0)], timedelta(minutes=5))


async def test_summary_counts_the_window_since_and_leaves_older_records_out(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """``--since 2h``: the records of 1h and 5m ago per tracking code, not those of 3h ago."""
    await publish_window(kafka_bootstrap, topic)

    status, out, _ = await cli("summary", "--since", "2h")

    assert status == 0
    assert out.splitlines()[0].startswith(f"{topic} from ")
    assert out.splitlines()[0].endswith(": 8 outcome records")
    rows = table(out)
    assert rows == {
        "ACME": ["3", "1", "1", "0", "2", "60.0%", "30.0", "2000.0"],
        "BETA": ["0", "0", "0", "1", "0", "0.0%", "-", "-"],
        "total": ["3", "1", "1", "1", "2", "50.0%", "30.0", "2000.0"],
    }


async def test_summary_until_ends_the_window(cli: Any, kafka_bootstrap: str, topic: str) -> None:
    """``--since 2h --until 30m``: the record of 5 minutes ago is left out as well."""
    await publish_window(kafka_bootstrap, topic)

    status, out, _ = await cli("summary", "--since", "2h", "--until", "30m")

    assert status == 0
    assert out.splitlines()[0].endswith(": 7 outcome records")
    assert table(out)["total"][:5] == ["2", "1", "1", "1", "2"]


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        (
            "tracking-code",
            {"ACME": ["3", "1", "1", "0", "2"], "BETA": ["0", "0", "0", "1", "0"]},
        ),
        (
            "trigger",
            {
                "completed": ["2", "1", "1", "0", "1"],
                "reset": ["1", "0", "0", "0", "1"],
                "-": ["0", "0", "0", "1", "0"],
            },
        ),
        (
            "reason",
            {
                "http_404": ["0", "1", "0", "0", "0"],
                "http_503": ["0", "0", "0", "0", "1"],
                "inactive_tracking_code": ["0", "0", "1", "0", "0"],
                "invalid_event": ["0", "0", "0", "1", "0"],
                "timeout": ["0", "0", "0", "0", "1"],
                "-": ["3", "0", "0", "0", "0"],
            },
        ),
    ],
)
async def test_summary_groups_by_the_chosen_field(
    cli: Any, kafka_bootstrap: str, topic: str, by: str, expected: dict[str, list[str]]
) -> None:
    """``--by``: a row per value of the field, by name, records without it last, then the total."""
    await publish_window(kafka_bootstrap, topic)

    status, out, _ = await cli("summary", "--since", "2h", "--by", by)

    assert status == 0
    assert out.splitlines()[1].startswith(by.replace("-", "_").upper())
    rows = table(out)
    assert list(rows) == [*expected, "total"]
    assert {name: cells[:5] for name, cells in rows.items() if name != "total"} == expected


async def test_summary_counts_only_the_chosen_tracking_codes(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """``--tracking-code BETA``: ACME's records are not counted, not even in the total."""
    await publish_window(kafka_bootstrap, topic)

    status, out, _ = await cli("summary", "--since", "2h", "--tracking-code", "BETA")

    assert status == 0
    assert list(table(out)) == ["BETA", "total"]
    assert out.splitlines()[0].endswith(": 1 outcome record")


async def test_summary_of_an_empty_window_is_a_zero_total(cli: Any, topic: str) -> None:
    """Nothing published: exit 0, the header and a total row of zeros."""
    status, out, _ = await cli("summary", "--since", "1h")

    assert status == 0
    assert out.splitlines()[0].endswith(": 0 outcome records")
    assert table(out) == {"total": ["0", "0", "0", "0", "0", "-", "-", "-"]}


async def test_summary_skips_what_is_not_an_outcome_and_says_so(
    cli: Any, kafka_bootstrap: str, topic: str
) -> None:
    """A record that is not JSON is named on stderr by its offset; the others are counted."""
    await publish(kafka_bootstrap, topic, [b"not json", record()])

    status, out, err = await cli("summary", "--since", "1h")

    assert status == 0
    assert table(out)["total"][0] == "1"
    assert "skipped a record that is not an outcome" in err


async def test_summary_shows_progress_on_stderr(
    cli: Any, kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a window is read, ``read N/TOTAL records`` lines go to stderr, ending at the total."""
    monkeypatch.setattr(outcomes_admin, "PROGRESS_INTERVAL", 0.0)
    await publish(kafka_bootstrap, topic, [record() for _ in range(30)])

    status, out, err = await cli("summary", "--since", "1h")

    assert status == 0
    assert err.splitlines()[-1] == "read 30/30 records"
    assert table(out)["total"][0] == "30"


# -------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", [["tail"], ["summary", "--since", "1h"]])
async def test_an_unreachable_kafka_is_one_line_and_exit_1(command: list[str]) -> None:
    """Nothing listening at KAFKA_BOOTSTRAP_SERVERS: exit 1 within the bound, one clear line."""
    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()

    status, out, err = await run_cli(*command, KAFKA_BOOTSTRAP_SERVERS=bootstrap)

    assert status == 1
    assert time.monotonic() - started < outcomes_admin.CONNECT_TIMEOUT + 10
    assert out == ""
    assert err == f"outcomes: cannot reach Kafka at {bootstrap} (KafkaConnectionError)\n"


async def test_a_missing_topic_is_one_line_and_exit_1(kafka_bootstrap: str) -> None:
    """OUTCOMES_TOPIC naming no topic: exit 1 naming it; the topic is not created."""
    name = "test-outcomes-no-such-topic"
    status, _, err = await run_cli(
        "summary", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, OUTCOMES_TOPIC=name
    )
    assert status == 1
    assert err == f"outcomes: no topic {name!r} on Kafka at {kafka_bootstrap}\n"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert name not in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["summary", "--since", "yesterday"], "--since"),
        (["tail", "--since", "2026-12-02T07:00:00"], "--since"),
        (["summary", "--since", "1h", "--until", "2h"], "--until"),
        (["tail", "--limit", "0"], "--limit"),
        (["tail", "--timeout", "soon"], "--timeout"),
    ],
)
async def test_invalid_input_is_exit_2_naming_the_flag_before_kafka_is_reached(
    argv: list[str], flag: str
) -> None:
    """A bad TIME, window, limit or timeout: exit 2, one line naming the flag, with no Kafka."""
    status, out, err = await run_cli(*argv, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")

    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"outcomes: {flag}: ")
