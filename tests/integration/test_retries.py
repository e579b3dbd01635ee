"""Durable retries, endpoint isolation, the breaker, pause and replay, end to end: the real
service against Kafka, Postgres and loopback receivers."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from consumer.admin import deliveries as deliveries_admin
from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    TopicReader,
    add_tracking_code,
    by_event,
    final_for,
    free_port,
    publish,
    running_service,
)
from tests.receiver import ReceivedRequest, Receiver
from tests.signatures import assert_verifies

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def webhook_ids(requests: list[ReceivedRequest]) -> list[str]:
    return [r.headers["webhook-id"] for r in requests]


def answering(statuses: dict[str, int] | None = None, default: int = 200) -> Any:
    """A responder that answers by the request's path, ``default`` otherwise; the dict may
    be changed while the test runs."""
    table = statuses if statuses is not None else {}

    async def respond(request: web.Request, _n: int) -> web.StreamResponse:
        return web.Response(status=table.get(request.path, default), text="x")

    return respond


async def metric_values(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name`` by its labels; empty while the service is not serving yet."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
    except aiohttp.ClientConnectionError:
        return {}
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def wait_for_metric(port: int, name: str, labels: dict[str, str], value: float) -> None:
    key = tuple(sorted(labels.items()))
    async with asyncio.timeout(20):
        while (await metric_values(port, name)).get(key) != value:
            await asyncio.sleep(0.1)


async def test_a_retry_due_after_a_restart_is_sent_by_the_new_process(stack: Stack) -> None:
    """The first process schedules the retry and stops; the next one sends it, not before
    its announced time."""
    statuses = {"/hook": 503}
    receiver = await Receiver(respond=answering(statuses)).start()
    event = event_dict(test_id="LATER", tracking_code="R")
    settings = stack.settings(RETRY_SCHEDULE="3s")
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, [event])
        async with TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes:
            async with running_service(settings):
                await outcomes.until(lambda records: len(records) >= 1)
            assert len(receiver.requests) == 1, "the retry was not due while it ran"
            statuses["/hook"] = 200
            async with running_service(settings):
                await outcomes.until(final_for({event["event_id"]}))
    finally:
        await receiver.stop()
    scheduled, delivered = outcomes.values()
    assert (scheduled["outcome"], delivered["outcome"]) == ("retry_scheduled", "delivered")
    assert delivered["attempt"] == 2
    retry = receiver.requests[1]
    assert retry.wall >= unix(scheduled["next_attempt_at"]) - 0.05
    assert webhook_ids(receiver.requests) == [event["event_id"]] * 2


async def test_a_retry_uses_the_tracking_code_as_it_is_now(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """Staff fix the URL during the outage: the retry goes to the new one, with the same
    webhook-id and a fresh timestamp and signature."""
    broken = await Receiver(respond=answering(default=503)).start()
    fixed = await Receiver().start()
    event = event_dict(test_id="MOVED", tracking_code="R")
    try:
        await add_tracking_code(stack.database_url, "R", broken.url, signing_secret=SECRET)
        await publish(stack.bootstrap, stack.events_topic, [event])
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(stack.settings(RETRY_SCHEDULE="2s", TRACKING_CODE_TTL="100ms")),
        ):
            await outcomes.until(lambda records: len(records) >= 1)
            await db.execute("UPDATE tracking_codes SET endpoint_url = $1", fixed.url)
            await outcomes.until(final_for({event["event_id"]}))
    finally:
        await broken.stop()
        await fixed.stop()
    [first] = broken.requests
    [retry] = fixed.requests
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == event["event_id"]
    assert int(retry.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert_verifies(SECRET, retry.body, retry.headers)
    assert [o["outcome"] for o in outcomes.values()] == ["retry_scheduled", "delivered"]


async def test_a_code_disabled_during_the_wait_ends_the_delivery_skipped(
    stack: Stack, db: asyncpg.Connection
) -> None:
    receiver = await Receiver(respond=answering(default=503)).start()
    event = event_dict(test_id="OFF", tracking_code="R")
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, [event])
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(stack.settings(RETRY_SCHEDULE="1s", TRACKING_CODE_TTL="100ms")),
        ):
            await outcomes.until(lambda records: len(records) >= 1)
            await db.execute("UPDATE tracking_codes SET active = false")
            await outcomes.until(final_for({event["event_id"]}))
    finally:
        await receiver.stop()
    final = outcomes.values()[-1]
    assert (final["outcome"], final["reason"]) == ("skipped", "inactive_tracking_code")
    assert len(receiver.requests) == 1
    assert await db.fetchval("SELECT count(*) FROM scheduled_deliveries") == 0


async def test_a_tests_later_events_wait_behind_its_retry_and_others_do_not(
    stack: Stack,
) -> None:
    """E1 fails once; E2 and E3 of the same test go out after E1, in order; another test's
    event is not held back."""
    first_calls: Counter[str] = Counter()

    async def respond(request: web.Request, _n: int) -> web.StreamResponse:
        webhook_id = request.headers["webhook-id"]
        first_calls[webhook_id] += 1
        if webhook_id == first["event_id"] and first_calls[webhook_id] == 1:
            return web.Response(status=503)
        return web.Response(text="ok")

    first = event_dict(test_id="ORDER", tracking_code="R")
    second = event_dict(test_id="ORDER", tracking_code="R", status="Invalidated")
    third = event_dict(test_id="ORDER", tracking_code="R", event_type="reset", reset_type="x")
    other = event_dict(test_id="OTHER", tracking_code="R")
    receiver = await Receiver(respond=respond).start()
    events = [first, second, third, other]
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, events)
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(stack.settings(RETRY_SCHEDULE="1s")),
        ):
            await outcomes.until(final_for({e["event_id"] for e in events}))
    finally:
        await receiver.stop()
    ids = webhook_ids(receiver.requests)
    order = [first["event_id"], first["event_id"], second["event_id"], third["event_id"]]
    assert [i for i in ids if i != other["event_id"]] == order
    assert ids.index(other["event_id"]) < ids.index(first["event_id"], 1), (
        "the other test went out during the first one's wait"
    )
    reasons = {o["event_id"]: o["reason"] for o in outcomes.values() if o["reason"]}
    assert reasons[second["event_id"]] == "earlier_delivery_pending"


async def test_a_hanging_endpoint_uses_only_its_share_and_others_flow(stack: Stack) -> None:
    """One code's endpoint accepts and never answers: it holds at most its share of slots,
    its further events wait in the schedule, and the other code's webhooks all arrive
    while every hanging attempt is still hanging."""
    never = asyncio.Event()
    hanging_now = 0
    hanging_peak = 0

    async def hang(_request: web.Request, _n: int) -> web.StreamResponse:
        nonlocal hanging_now, hanging_peak
        hanging_now += 1
        hanging_peak = max(hanging_peak, hanging_now)
        try:
            await never.wait()
        finally:
            hanging_now -= 1
        return web.Response(text="late")

    stuck = await Receiver(respond=hang).start()
    healthy = await Receiver().start()
    good = [event_dict(test_id=f"G{i}", tracking_code="GOOD") for i in range(1500)]
    bad = [event_dict(test_id=f"H{i}", tracking_code="HANG") for i in range(150)]
    mixed = [e for pair in zip(good[:150], bad, strict=True) for e in pair] + good[150:]
    settings = stack.settings(
        MAX_IN_FLIGHT_PER_ENDPOINT="20", HTTP_TOTAL_TIMEOUT="60s", DRAIN_TIMEOUT="1s"
    )
    try:
        await add_tracking_code(stack.database_url, "GOOD", healthy.url)
        await add_tracking_code(stack.database_url, "HANG", stuck.url)
        await publish(stack.bootstrap, stack.events_topic, mixed)
        started = time.monotonic()
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(settings),
        ):
            await healthy.wait_for(len(good), timeout=40)
            elapsed = time.monotonic() - started
            await outcomes.until(
                lambda records: sum(b"endpoint_busy" in r.value for r in records) >= 130
            )
    finally:
        never.set()
        await stuck.stop()
        await healthy.stop()
    assert elapsed < 40
    assert hanging_peak <= 20
    assert len(stuck.requests) <= 20, "no hanging event was attempted beyond the share"
    assert set(webhook_ids(healthy.requests)) == {e["event_id"] for e in good}


async def test_the_breaker_opens_on_failures_skips_attempts_and_closes_on_a_probe(
    stack: Stack,
) -> None:
    statuses = {"/hook": 503}
    receiver = await Receiver(respond=answering(statuses)).start()
    port = free_port()
    events = [event_dict(test_id=f"B{i}", tracking_code="FLAKY") for i in range(30)]
    settings = stack.settings(
        HTTP_PORT=str(port),
        RETRY_SCHEDULE=",".join(["300ms"] * 30),
        BREAKER_MIN_ATTEMPTS="5",
        BREAKER_COOLDOWN="1s",
    )
    try:
        await add_tracking_code(stack.database_url, "FLAKY", receiver.url)
        with capture_logs() as logs:
            async with (
                TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
                running_service(settings),
            ):
                await publish(stack.bootstrap, stack.events_topic, events)
                await wait_for_metric(port, "itep_breaker_state", {"tracking_code": "FLAKY"}, 2)
                await outcomes.until(
                    lambda records: sum(b"circuit_open" in r.value for r in records) >= 30
                )
                statuses["/hook"] = 200
                await outcomes.until(final_for({e["event_id"] for e in events}), timeout=30)
                skipped = await metric_values(port, "itep_breaker_skipped_attempts_total")
                await wait_for_metric(port, "itep_breaker_state", {"tracking_code": "FLAKY"}, 0)
    finally:
        await receiver.stop()
    docs = outcomes.values()
    circuit_open = [o for o in docs if o["reason"] == "circuit_open"]
    assert skipped[(("tracking_code", "FLAKY"),)] == len(circuit_open)
    assert all(o["outcome"] == "retry_scheduled" for o in circuit_open)
    finals = [o for o in docs if o["outcome"] != "retry_scheduled"]
    assert [o["outcome"] for o in finals] == ["delivered"] * 30
    attempts = len(receiver.requests)
    retry_slots = sum(1 for o in docs if o["outcome"] == "retry_scheduled")
    assert attempts == retry_slots - len(circuit_open) + 30, "an open breaker made no POST"
    events_logged = [e["event"] for e in logs]
    assert "breaker_open" in events_logged
    assert "breaker_half_open" in events_logged
    assert "breaker_closed" in events_logged


async def test_an_open_breaker_does_not_outlast_the_schedule(stack: Stack) -> None:
    """With the breaker open for longer than the whole schedule, each delivery still uses
    up its steps and fails once, after one real attempt on its last step: an open breaker
    never keeps a delivery waiting beyond RETRY_SCHEDULE."""
    receiver = await Receiver(respond=answering(default=503)).start()
    events = [event_dict(test_id=f"E{i}", tracking_code="DOWN") for i in range(20)]
    settings = stack.settings(
        RETRY_SCHEDULE="200ms,400ms", BREAKER_MIN_ATTEMPTS="2", BREAKER_COOLDOWN="600s"
    )
    try:
        await add_tracking_code(stack.database_url, "DOWN", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, events)
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(settings),
        ):
            await outcomes.until(final_for({e["event_id"] for e in events}), timeout=30)
    finally:
        await receiver.stop()
    finals = [o for o in outcomes.values() if o["outcome"] != "retry_scheduled"]
    assert sorted((o["outcome"], o["reason"]) for o in finals) == [
        ("failed", "retries_exhausted")
    ] * len(events)
    assert all(o["attempt"] >= 1 for o in finals), "the last step is a real attempt"


async def test_deliveries_waiting_behind_a_hanging_endpoint_are_held_in_bulk_when_it_opens(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """The code's share hangs and its other deliveries wait in the schedule (endpoint_busy).
    When a hanging attempt times out and opens the breaker, those deliveries are held for
    it in bulk, not claimed one by one: each uses a step, is due after the step's delay
    (later than the probe here), and has its retry_scheduled record."""
    never = asyncio.Event()

    async def hang(_request: web.Request, _n: int) -> web.StreamResponse:
        await never.wait()
        return web.Response(text="late")

    stuck = await Receiver(respond=hang).start()
    port = free_port()
    events = [event_dict(test_id=f"W{i}", tracking_code="HANG") for i in range(20)]
    settings = stack.settings(
        HTTP_PORT=str(port),
        MAX_IN_FLIGHT_PER_ENDPOINT="2",
        ENDPOINT_QUEUE_WAIT="0s",
        HTTP_TOTAL_TIMEOUT="2s",
        BREAKER_MIN_ATTEMPTS="1",  # the first timeout opens the breaker
        BREAKER_COOLDOWN="60s",
        RETRY_SCHEDULE="10m,10m",
    )
    try:
        await add_tracking_code(stack.database_url, "HANG", stuck.url)
        with capture_logs() as logs:
            async with (
                TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
                running_service(settings),
            ):
                await publish(stack.bootstrap, stack.events_topic, events)
                await outcomes.until(lambda records: len(records) >= 2 * len(events) - 2)
                await asyncio.sleep(1.0)  # time for a claim, were there one to make
                rows = await db.fetch(
                    "SELECT reason, step, extract(epoch FROM due_at - now()) AS due_in"
                    " FROM scheduled_deliveries WHERE reason = 'circuit_open'"
                )
                skipped = await metric_values(port, "itep_breaker_skipped_attempts_total")
    finally:
        never.set()
        await stuck.stop()
    grouped = by_event(outcomes.values())
    reasons = Counter(tuple(o["reason"] for o in grouped[e["event_id"]]) for e in events)
    assert reasons == {("endpoint_busy", "circuit_open"): 18, ("timeout",): 2}
    assert len(stuck.requests) == 2
    assert len(rows) == 18
    assert all(r["step"] == 1 and 470 < r["due_in"] <= 720 for r in rows)
    held = [e for e in logs if e["event"] == "breaker_open_held"]
    assert [e["deliveries"] for e in held] == [18], "held in bulk, none claimed to be held"
    assert skipped[(("tracking_code", "HANG"),)] == 18


async def replay(database_url: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="itep-webhooks")
    deliveries_admin.register(parser.add_subparsers(dest="command", required=True))
    return await deliveries_admin.run(parser.parse_args(["deliveries", *argv]), database_url)


async def test_exhausted_deliveries_are_kept_dead_and_replay_delivers_them(
    stack: Stack, db: asyncpg.Connection
) -> None:
    statuses = {"/hook": 503}
    receiver = await Receiver(respond=answering(statuses)).start()
    port = free_port()
    events = [event_dict(test_id=f"X{i}", tracking_code="R") for i in range(5)]
    ids = {e["event_id"] for e in events}
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, events)
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(
                # The breaker would hold the replayed deliveries one step; not the point here.
                stack.settings(
                    RETRY_SCHEDULE="200ms", HTTP_PORT=str(port), BREAKER_MIN_ATTEMPTS="100"
                )
            ),
        ):
            await outcomes.until(final_for(ids))
            await wait_for_metric(port, "itep_scheduled_deliveries", {"state": "dead"}, 5)
            rows = await db.fetch("SELECT state, reason, attempts FROM scheduled_deliveries")
            statuses["/hook"] = 200
            assert await replay(stack.database_url, "replay", "--tracking-code", "R") == 0
            await receiver.wait_for(15)
            await outcomes.until(
                lambda records: sum(b'"delivered"' in r.value for r in records) >= 5
            )
    finally:
        await receiver.stop()
    assert [tuple(r) for r in rows] == [("dead", "retries_exhausted", 2)] * 5
    grouped = by_event(outcomes.values())
    for event_id in ids:
        assert [o["outcome"] for o in grouped[event_id]] == [
            "retry_scheduled",
            "failed",
            "delivered",
        ]
    assert await db.fetchval("SELECT count(*) FROM scheduled_deliveries") == 0


async def test_a_paused_code_sends_nothing_and_resume_releases_in_order(
    stack: Stack, db: asyncpg.Connection
) -> None:
    receiver = await Receiver().start()
    events = [
        event_dict(test_id="P", tracking_code="R"),
        event_dict(test_id="P", tracking_code="R", status="Invalidated"),
        event_dict(test_id="Q", tracking_code="R"),
    ]
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url, paused=True)
        await publish(stack.bootstrap, stack.events_topic, events)
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(stack.settings(TRACKING_CODE_TTL="100ms")),
        ):
            await outcomes.until(lambda records: len(records) >= 3)
            await asyncio.sleep(1.0)
            assert receiver.requests == [], "nothing is attempted while paused"
            await db.execute("UPDATE tracking_codes SET paused = false")
            await outcomes.until(final_for({e["event_id"] for e in events}))
    finally:
        await receiver.stop()
    held = [o["reason"] for o in outcomes.values()[:3]]
    assert sorted(held) == [
        "earlier_delivery_pending",
        "tracking_code_paused",
        "tracking_code_paused",
    ]
    p_ids = [i for i in webhook_ids(receiver.requests) if i != events[2]["event_id"]]
    assert p_ids == [events[0]["event_id"], events[1]["event_id"]]


async def test_two_instances_share_the_schedule_and_send_each_retry_once(
    stack: Stack,
) -> None:
    """Under an outage, two instances claim the retries between them: each attempt is made
    by one of them (attempts seen = attempts reported), and order per test holds."""
    healthy = asyncio.Event()

    async def respond(_request: web.Request, _n: int) -> web.StreamResponse:
        return web.Response(status=200 if healthy.is_set() else 503)

    receiver = await Receiver(respond=respond).start()
    events = [
        event_dict(test_id=f"S{i % 20}", tracking_code="R", event_type="reset", reset_type=f"r{i}")
        for i in range(100)
    ]
    settings = stack.settings(RETRY_SCHEDULE=",".join(["500ms"] * 12))
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(settings),
            running_service(settings),
        ):
            await publish(stack.bootstrap, stack.events_topic, events)
            await asyncio.sleep(2.0)
            healthy.set()
            await outcomes.until(final_for({e["event_id"] for e in events}), timeout=60)
    finally:
        await receiver.stop()
    docs = outcomes.values()
    attempted = Counter(webhook_ids(receiver.requests))
    reported = Counter(o["event_id"] for o in docs if o["http_status"] is not None)
    assert attempted == reported, "no attempt was made twice"
    assert [o["outcome"] for o in docs if o["outcome"] != "retry_scheduled"] == ["delivered"] * 100
    per_test: dict[str, list[str]] = defaultdict(list)
    for doc in docs:
        if doc["outcome"] == "delivered":
            per_test[doc["test_id"]].append(doc["event_id"])
    published: dict[str, list[str]] = defaultdict(list)
    for event in events:
        published[event["test_id"]].append(event["event_id"])
    assert per_test == published


async def test_outcome_records_of_retries_parse_as_json(stack: Stack) -> None:
    """Every retry_scheduled record names its reason and its next attempt."""
    receiver = await Receiver(respond=answering(default=503)).start()
    event = event_dict(test_id="J", tracking_code="R")
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        await publish(stack.bootstrap, stack.events_topic, [event])
        async with (
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            running_service(stack.settings(RETRY_SCHEDULE="100ms,100ms")),
        ):
            await outcomes.until(final_for({event["event_id"]}))
    finally:
        await receiver.stop()
    for record in outcomes.records:
        doc = orjson.loads(record.value)
        if doc["outcome"] == "retry_scheduled":
            assert doc["reason"] == "http_503"
            assert unix(doc["next_attempt_at"]) >= unix(doc["recorded_at"])
