"""What SREs watch: the alert rules and the dashboard pass promtool, and the lag and stall
series of a running service follow its assignment."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from consumer.lag import LAG_INTERVAL
from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    add_tracking_code,
    free_port,
    publish,
    running_service,
)
from tests.receiver import Receiver
from tests.unit.test_dashboard_metrics import dashboard_expressions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PARTITIONS = {"0", "1", "2"}  # the stack's events topic


def promtool(*args: str, stdin: bytes | None = None) -> str:
    """Run promtool; fail the test with its output when it refuses."""
    path = shutil.which("promtool")
    assert path, "promtool is missing: run `make system-deps` (Debian's prometheus package)"
    done = subprocess.run(  # noqa: S603 - fixed arguments
        [path, *args], input=stdin, capture_output=True, check=False, timeout=60
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    return output


def test_the_alert_rules_are_valid() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))


def test_the_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(PROMETHEUS / "alerts.test.yml"))


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, Grafana's variables filled in, checked as a recording rule."""
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$instance", ".*"),
        }
        for i, expr in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


async def metrics_text(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def by_partition(session: aiohttp.ClientSession, port: int, name: str) -> dict[str, float]:
    """One labelled series of the service, partition -> value."""
    try:
        text = await metrics_text(session, port)
    except aiohttp.ClientConnectionError:
        return {}  # not listening yet
    return {
        sample.labels["partition"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def wait_for_partitions(
    session: aiohttp.ClientSession, port: int, name: str, partitions: set[str]
) -> dict[str, float]:
    """Scrape until ``name`` has a series for exactly ``partitions``."""
    async with asyncio.timeout(30):
        while set(values := await by_partition(session, port, name)) != partitions:
            await asyncio.sleep(0.1)
    return values


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_lag_is_zero_for_every_partition_of_an_idle_topic_from_the_assignment(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """Nothing was ever published or fetched: every assigned partition still has its series."""
    port = free_port()
    async with running_service(stack.settings(HTTP_PORT=str(port))):
        lag = await wait_for_partitions(session, port, "itep_consumer_lag", PARTITIONS)
        ages = await by_partition(session, port, "itep_consumer_commit_age_seconds")
        ready = [
            s.value
            for f in text_string_to_metric_families(await metrics_text(session, port))
            for s in f.samples
            if s.name == "itep_ready"
        ]
    assert lag == dict.fromkeys(PARTITIONS, 0.0)
    assert ages == dict.fromkeys(PARTITIONS, 0.0)
    assert ready == [1.0]


async def test_partitions_handed_to_another_member_lose_their_lag_series(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """A second member joins the group: the service's lag lists only what it keeps, and
    every partition again once the member leaves."""
    port = free_port()
    async with running_service(stack.settings(HTTP_PORT=str(port))):
        await wait_for_partitions(session, port, "itep_consumer_lag", PARTITIONS)
        other = AIOKafkaConsumer(
            stack.events_topic,
            bootstrap_servers=stack.bootstrap,
            group_id=stack.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await other.start()
        polling = asyncio.create_task(_poll_forever(other))
        try:
            async with asyncio.timeout(60):
                while True:
                    taken = {str(tp.partition) for tp in other.assignment()}
                    kept = set(await by_partition(session, port, "itep_consumer_lag"))
                    if taken and kept == PARTITIONS - taken:
                        break
                    await asyncio.sleep(0.1)
            await asyncio.sleep(LAG_INTERVAL + 1)  # a refresh brings no revoked series back
            assert set(await by_partition(session, port, "itep_consumer_lag")) == kept
            ages = await by_partition(session, port, "itep_consumer_commit_age_seconds")
            assert set(ages) == kept
        finally:
            polling.cancel()
            await other.stop()
        await wait_for_partitions(session, port, "itep_consumer_lag", PARTITIONS)


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=100)


async def test_commit_age_grows_while_a_partition_is_stalled_and_falls_back_once_it_moves(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """A receiver that does not answer holds the only event: its partition shows lag 1 and
    an age that grows; once it answers, both fall back to 0. The live /metrics then passes
    `promtool check metrics`."""
    release = asyncio.Event()

    async def stall(_request: web.Request, _n: int) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="ok")

    receiver = await Receiver(respond=stall).start()
    port = free_port()
    try:
        await add_tracking_code(stack.database_url, "STALL", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, [event_dict(tracking_code="STALL")])
        settings = stack.settings(HTTP_PORT=str(port), HTTP_TOTAL_TIMEOUT="60s")
        async with running_service(settings):
            await receiver.wait_for(1)
            lag = await wait_for_partitions(session, port, "itep_consumer_lag", PARTITIONS)
            (stalled,) = [p for p, value in lag.items() if value == 1]
            assert sorted(lag.values()) == [0, 0, 1]
            first = (await by_partition(session, port, "itep_consumer_commit_age_seconds"))[stalled]
            await asyncio.sleep(2 * LAG_INTERVAL + 1)
            later = await by_partition(session, port, "itep_consumer_commit_age_seconds")
            assert later[stalled] >= first + LAG_INTERVAL, "the stall does not show"
            assert later[stalled] > 0
            assert all(later[p] == 0 for p in PARTITIONS - {stalled}), "idle is not stalled"
            release.set()
            async with asyncio.timeout(30):
                while set((await by_partition(session, port, "itep_consumer_lag")).values()) != {0}:
                    await asyncio.sleep(0.2)
            ages = await by_partition(session, port, "itep_consumer_commit_age_seconds")
            assert ages == dict.fromkeys(PARTITIONS, 0.0)
            text = await metrics_text(session, port)
    finally:
        release.set()
        await receiver.stop()
    attempts = {
        (sample.labels["tracking_code"], sample.labels["result"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "itep_endpoint_attempts_total"
    }
    assert attempts == {("STALL", "delivered"): 1.0}
    promtool("check", "metrics", stdin=text.encode())
