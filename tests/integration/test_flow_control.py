"""Back-pressure and the operator's endpoints, with the service in this process."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    TopicReader,
    add_tracking_code,
    free_port,
    publish,
    running_service,
)
from tests.receiver import Receiver

pytestmark = pytest.mark.integration


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def scrape_labelled(session: aiohttp.ClientSession, port: int, name: str) -> list[float]:
    """Every value of one labelled metric."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def wait_for_gauge(
    session: aiohttp.ClientSession, port: int, name: str, value: float
) -> None:
    """Scrape /metrics until the gauge has ``value``; the service is observed from outside,
    so polling is the only way to wait."""
    async with asyncio.timeout(20):
        while (await scrape(session, port)).get(name) != value:
            await asyncio.sleep(0.1)


async def test_partitions_pause_at_the_in_flight_limit_and_resume(stack: Stack) -> None:
    """With MAX_IN_FLIGHT=20 and a stalled receiver, fetching pauses instead of buffering
    everything: 20 attempts wait at the receiver and 10 more events (the window's margin) for
    a connection. Once the receiver answers, every event is delivered."""
    release = asyncio.Event()
    inside = 0
    most_inside = 0

    async def stall(_request: web.Request, _n: int) -> web.StreamResponse:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        await release.wait()
        inside -= 1
        return web.Response(text="ok")

    receiver = await Receiver(respond=stall).start()
    port = free_port()
    events = [event_dict(test_id=f"FLOW{i}", tracking_code="FLOW") for i in range(300)]
    try:
        await add_tracking_code(stack.database_url, "FLOW", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, events)
        settings = stack.settings(MAX_IN_FLIGHT="20", HTTP_PORT=str(port), HTTP_TOTAL_TIMEOUT="60s")
        async with (
            running_service(settings),
            aiohttp.ClientSession() as session,
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
        ):
            await receiver.wait_for(20)
            await wait_for_gauge(session, port, "itep_partitions_paused", 1)
            await asyncio.sleep(1.0)  # time in which an unbounded consumer would fetch all 300
            stalled = await scrape(session, port)
            assert stalled["itep_events_in_flight"] == 30
            lag = await scrape_labelled(session, port, "itep_consumer_lag")
            # Read from the broker for every assigned partition, fetched from or not: nothing
            # is finished, so nothing is committed and every record counts.
            assert len(lag) == 3, "a partition has no lag series"
            assert sum(lag) == len(events), "a stalled consumer shows its lag"
            assert len(receiver.requests) == 20
            release.set()
            await outcomes.until(lambda records: len(records) >= len(events), timeout=60)
            await wait_for_gauge(session, port, "itep_partitions_paused", 0)
    finally:
        release.set()
        await receiver.stop()
    assert most_inside == 20
    delivered = {orjson.loads(r.value)["event_id"] for r in outcomes.records}
    assert delivered == {e["event_id"] for e in events}


async def test_health_and_readiness_endpoints_answer_while_running(stack: Stack) -> None:
    """/healthz is 200 while the process lives; /readyz is 200 once the loop runs."""
    port = free_port()
    async with (
        running_service(stack.settings(HTTP_PORT=str(port))),
        aiohttp.ClientSession() as session,
    ):
        async with asyncio.timeout(20):
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        metrics = await scrape(session, port)
        assert "itep_events_in_flight" in metrics


async def test_a_rebalance_hands_partitions_over_without_losing_or_resending(
    stack: Stack,
) -> None:
    """A second instance joins mid-stream: the first drains and commits what it gives up,
    so every webhook arrives, none twice, and both instances did part of the work."""

    async def slow(_request: web.Request, _n: int) -> web.StreamResponse:
        await asyncio.sleep(0.1)
        return web.Response(text="ok")

    receiver = await Receiver(respond=slow).start()
    events = [
        event_dict(
            test_id=f"REB{i % 30}",
            tracking_code="REB",
            event_type="reset",
            reset_type=f"r{i}",
            status="Ready",
            previous_status="Ready",
        )
        for i in range(1200)
    ]
    try:
        await add_tracking_code(stack.database_url, "REB", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, events)
        with capture_logs() as logs:
            async with running_service(stack.settings()):
                await receiver.wait_for(60, timeout=30)
                async with running_service(stack.settings()):
                    await receiver.wait_for(len(events), timeout=90)
    finally:
        await receiver.stop()
    revoked = [e for e in logs if e["event"] == "partitions_revoked" and e["partitions"]]
    assert revoked, "no partition changed hands"
    assert all(e["drained"] for e in revoked)
    webhook_ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert set(webhook_ids) == {e["event_id"] for e in events}
    assert len(webhook_ids) == len(set(webhook_ids)), "a handed-over event was sent twice"
