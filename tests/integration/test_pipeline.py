"""The service end to end: real Kafka, real Postgres, real HTTP receivers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from structlog.testing import capture_logs

from consumer.topics import ensure_topics
from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    TopicReader,
    add_tracking_code,
    by_event,
    final_for,
    publish,
    running_service,
)
from tests.proxy import PostgresProxy
from tests.receiver import Receiver
from tests.signatures import assert_verifies

pytestmark = pytest.mark.integration


async def test_trigger_table_decides_which_events_send_a_webhook(
    stack: Stack, receiver: Receiver
) -> None:
    """Every row of CONTRACT section 1: triggers deliver, everything else publishes nothing."""
    await add_tracking_code(stack.database_url, "ON-FIN", receiver.url, call_on_finished=True)
    await add_tracking_code(stack.database_url, "NO-FIN", receiver.url)
    rows = {
        "finished": event_dict(
            test_id="T1", tracking_code="ON-FIN", status="Finished", previous_status="Incomplete"
        ),
        "completed": event_dict(test_id="T2", tracking_code="NO-FIN"),
        "reset": event_dict(
            test_id="T3",
            tracking_code="NO-FIN",
            event_type="reset",
            reset_type="full",
            status="Ready",
            previous_status="Ready",
        ),
        "invalidated": event_dict(
            test_id="T4", tracking_code="NO-FIN", status="Invalidated", previous_status="Review"
        ),
        "technical_issue": event_dict(
            test_id="T5",
            tracking_code="NO-FIN",
            status="Technical Difficulty",
            previous_status="Started",
        ),
    }
    silent = {
        "finished without call_on_finished": event_dict(
            test_id="S1", tracking_code="NO-FIN", status="Finished", previous_status="Incomplete"
        ),
        "finished with no tracking code": event_dict(
            test_id="S2", tracking_code=None, status="Finished", previous_status=None
        ),
        "repeated Complete": event_dict(
            test_id="S3", tracking_code="NO-FIN", previous_status="Completed"
        ),
        **{
            f"status {status}": event_dict(
                test_id=f"S-{status}",
                tracking_code="NO-FIN",
                status=status,
                previous_status="Finished",
            )
            for status in ("Ready", "Incomplete", "Review", "Disabled")
        },
    }
    # A marker published last: once it is delivered, every earlier event was decided.
    marker = event_dict(test_id="Z9", tracking_code="NO-FIN")
    await publish(stack.bootstrap, stack.events_topic, [*silent.values(), *rows.values(), marker])
    async with (
        running_service(stack.settings()),
        TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
    ):
        ids = {e["event_id"] for e in rows.values()} | {marker["event_id"]}
        await outcomes.until(final_for(ids))
        await receiver.wait_for(len(ids))
    grouped = by_event(outcomes.values())
    for trigger, event in rows.items():
        [outcome] = grouped[event["event_id"]]
        assert outcome["trigger"] == trigger
        assert outcome["outcome"] == "delivered", outcome
    for why, event in silent.items():
        assert event["event_id"] not in grouped, why
    received = {orjson.loads(r.data)["TestID"] for r in receiver.requests}
    assert received == {"T1", "T2", "T3", "T4", "T5", "Z9"}
    statuses = {
        orjson.loads(r.data)["TestID"]: orjson.loads(r.data)["Status"] for r in receiver.requests
    }
    assert statuses["T5"] == "Problem"


async def test_completed_webhook_carries_the_exact_itep_payload_and_outcome(
    stack: Stack, receiver: Receiver
) -> None:
    """The data field, extra fields and the outcome record match the contract's example."""
    await add_tracking_code(
        stack.database_url, "ACME-UNI", receiver.url, extra_fields={"school": "Acme & Co + 1"}
    )
    event = event_dict()
    await publish(stack.bootstrap, stack.events_topic, [event])
    async with (
        running_service(stack.settings()),
        TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
    ):
        await outcomes.until(final_for({event["event_id"]}))
    [request] = receiver.requests
    data = orjson.loads(request.data)
    assert data["score_report_url"] == "https://results.example.org/r/50613490BP?sig=a+b&x=1"
    assert data["TestDate"] == "11/24/2026"
    assert data["Writing_Question_Count"] == 2
    assert request.form["school"] == ["Acme & Co + 1"]
    assert request.headers["webhook-id"] == event["event_id"]
    [outcome] = outcomes.values()
    assert outcome == {
        "schema_version": 1,
        "event_id": event["event_id"],
        "test_id": "50613490BP",
        "oid": "crm-000042",
        "tracking_code": "ACME-UNI",
        "trigger": "completed",
        "exam_status": "Complete",
        "outcome": "delivered",
        "reason": None,
        "attempt": 1,
        "http_status": 200,
        "latency_ms": outcome["latency_ms"],
        "endpoint_host": "127.0.0.1",
        "event_occurred_at": "2026-11-25T16:02:11Z",
        "recorded_at": outcome["recorded_at"],
        "next_attempt_at": None,
    }
    assert isinstance(outcome["latency_ms"], float)
    assert outcome["recorded_at"].endswith("Z")
    assert outcomes.records[0].key == b"50613490BP"


async def test_each_auth_method_and_the_signature_arrive_on_the_wire(
    stack: Stack, receiver: Receiver
) -> None:
    """none, basic, bearer, header and query auth, and a signature standardwebhooks verifies."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    codes = {
        "A-NONE": {"signing_secret": secret},
        "A-BASIC": {
            "auth_method": "basic",
            "auth_params": {"username": "uni", "password": "p@ss:w0rd"},
        },
        "A-BEARER": {"auth_method": "bearer", "auth_params": {"token": "tok-123"}},
        "A-HEADER": {
            "auth_method": "header",
            "auth_params": {"name": "X-Api-Key", "value": "k-456"},
        },
        "A-QUERY": {"auth_method": "query", "auth_params": {"params": {"key": "q&7"}}},
    }
    events = []
    for code, columns in codes.items():
        await add_tracking_code(stack.database_url, code, receiver.url + "?src=itep", **columns)
        events.append(event_dict(test_id=code.replace("-", ""), tracking_code=code))
    await publish(stack.bootstrap, stack.events_topic, events)
    async with (
        running_service(stack.settings()),
        TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
    ):
        await outcomes.until(final_for({e["event_id"] for e in events}))
    seen = {orjson.loads(r.data)["TestID"]: r for r in receiver.requests}
    signed = seen["ANONE"]
    assert_verifies(secret, signed.body, signed.headers)
    assert "Authorization" not in signed.headers
    assert seen["ABASIC"].headers["Authorization"] == "Basic dW5pOnBAc3M6dzByZA=="
    assert seen["ABEARER"].headers["Authorization"] == "Bearer tok-123"
    assert seen["AHEADER"].headers["X-Api-Key"] == "k-456"
    assert seen["AQUERY"].query == {"src": ["itep"], "key": ["q&7"]}
    assert "webhook-signature" not in seen["ABASIC"].headers
    for doc in outcomes.values():
        assert doc["outcome"] == "delivered"
        assert "p@ss" not in orjson.dumps(doc).decode()


async def test_events_without_a_usable_tracking_code_are_skipped_with_a_reason(
    stack: Stack, receiver: Receiver
) -> None:
    """no_tracking_code, unknown_tracking_code and inactive_tracking_code; nothing is sent."""
    await add_tracking_code(stack.database_url, "OFF", receiver.url, active=False)
    events = {
        "no_tracking_code": event_dict(test_id="K1", tracking_code=None),
        "unknown_tracking_code": event_dict(test_id="K2", tracking_code="NOPE"),
        "inactive_tracking_code": event_dict(
            test_id="K3", tracking_code="OFF", status="Invalidated", previous_status=None
        ),
    }
    await publish(stack.bootstrap, stack.events_topic, list(events.values()))
    async with (
        running_service(stack.settings()),
        TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
    ):
        await outcomes.until(final_for({e["event_id"] for e in events.values()}))
    grouped = by_event(outcomes.values())
    for reason, event in events.items():
        [outcome] = grouped[event["event_id"]]
        assert (outcome["outcome"], outcome["reason"]) == ("skipped", reason)
        assert outcome["attempt"] == 0
    assert receiver.requests == []


async def test_invalid_events_are_dead_lettered_and_the_consumer_carries_on(
    stack: Stack, receiver: Receiver
) -> None:
    """Bytes unchanged, error and source headers, a rejected outcome when event_id is known."""
    await add_tracking_code(stack.database_url, "ACME-UNI", receiver.url)
    not_json = b"{not json"
    bad = event_dict(test_id="BAD1", duration_minutes=-5)
    good = event_dict(test_id="GOOD1")
    await publish(stack.bootstrap, stack.events_topic, [not_json, bad, good])
    async with (
        running_service(stack.settings()),
        TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
        TopicReader(stack.bootstrap, stack.dlq_topic) as dlq,
    ):
        await outcomes.until(final_for({bad["event_id"], good["event_id"]}))
        await dlq.until(lambda records: len(records) >= 2)
    grouped = by_event(outcomes.values())
    [rejected] = grouped[bad["event_id"]]
    assert (rejected["outcome"], rejected["reason"]) == ("rejected", "invalid_event")
    assert rejected["test_id"] == "BAD1"
    assert grouped[good["event_id"]][0]["outcome"] == "delivered"
    dead = {r.value: dict(r.headers) for r in dlq.records}
    assert set(dead) == {not_json, orjson.dumps(bad)}
    assert b"duration_minutes" in dead[orjson.dumps(bad)]["error"]
    assert dead[not_json]["source"].decode().startswith(f"{stack.events_topic}/")
    assert b"JSON" in dead[not_json]["error"]
    bad_record = next(r for r in dlq.records if r.value == orjson.dumps(bad))
    assert bad_record.key == b"BAD1"


async def test_retriable_failures_are_retried_then_reported(stack: Stack) -> None:
    """503 then 200 is delivered on attempt 2; 404 fails at once; endless 503 runs out."""
    flaky_calls: defaultdict[str, int] = defaultdict(int)

    async def respond(request: web.Request, _n: int) -> web.StreamResponse:
        test_id = orjson.loads((await request.post())["data"])["TestID"]  # type: ignore[arg-type]
        flaky_calls[test_id] += 1
        if test_id == "FLAKY" and flaky_calls[test_id] == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if test_id == "GONE":
            return web.Response(status=404)
        if test_id == "DOWN":
            return web.Response(status=503)
        return web.Response(text="ok")

    receiver = await Receiver(respond=respond).start()
    try:
        await add_tracking_code(stack.database_url, "R", receiver.url)
        events = {t: event_dict(test_id=t, tracking_code="R") for t in ("FLAKY", "GONE", "DOWN")}
        await publish(stack.bootstrap, stack.events_topic, list(events.values()))
        async with (
            running_service(stack.settings()),
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
        ):
            await outcomes.until(final_for({e["event_id"] for e in events.values()}))
    finally:
        await receiver.stop()
    grouped = by_event(outcomes.values())
    flaky = [
        (o["outcome"], o["attempt"], o["http_status"]) for o in grouped[events["FLAKY"]["event_id"]]
    ]
    assert flaky == [("retry_scheduled", 1, 503), ("delivered", 2, 200)]
    assert grouped[events["FLAKY"]["event_id"]][0]["next_attempt_at"] is not None
    gone = [(o["outcome"], o["reason"]) for o in grouped[events["GONE"]["event_id"]]]
    assert gone == [("failed", "http_404")]
    down = [(o["outcome"], o["reason"], o["attempt"]) for o in grouped[events["DOWN"]["event_id"]]]
    assert down == [
        ("retry_scheduled", "http_503", 1),
        ("retry_scheduled", "http_503", 2),
        ("failed", "retries_exhausted", 3),
    ]
    assert flaky_calls["DOWN"] == 3


async def test_webhooks_of_one_test_arrive_in_event_order(stack: Stack) -> None:
    """Per test id, the receiver sees events in publish order, whatever the response delays."""
    rng = random.Random(7)

    async def respond(_request: web.Request, _n: int) -> web.StreamResponse:
        await asyncio.sleep(rng.uniform(0, 0.02))
        return web.Response(text="ok")

    receiver = await Receiver(respond=respond).start()
    try:
        await add_tracking_code(stack.database_url, "ORD", receiver.url)
        events = []
        for step in range(12):
            for test in range(10):
                events.append(
                    event_dict(
                        test_id=f"ORDER{test}",
                        tracking_code="ORD",
                        event_type="reset",
                        reset_type=f"step-{step}",
                        status="Ready",
                        previous_status="Ready",
                        duration_minutes=step,
                    )
                )
        await publish(stack.bootstrap, stack.events_topic, events)
        async with running_service(stack.settings()):
            await receiver.wait_for(len(events), timeout=60)
    finally:
        await receiver.stop()
    arrivals: defaultdict[str, list[int]] = defaultdict(list)
    for request in receiver.requests:
        data = orjson.loads(request.data)
        arrivals[data["TestID"]].append(data["Duration"])
    assert len(arrivals) == 10
    for test_id, steps in arrivals.items():
        assert steps == list(range(12)), test_id


async def test_a_tracking_code_change_takes_effect_within_five_seconds(stack: Stack) -> None:
    """After an UPDATE commits, events consumed 5 s later go to the new endpoint."""
    old, new = await Receiver().start(), await Receiver().start()
    try:
        await add_tracking_code(stack.database_url, "MOVE", old.url)
        async with running_service(stack.settings()):
            first = event_dict(test_id="MV1", tracking_code="MOVE")
            await publish(stack.bootstrap, stack.events_topic, [first])
            await old.wait_for(1)
            conn = await asyncpg.connect(stack.database_url)
            try:
                await conn.execute(
                    "UPDATE tracking_codes SET endpoint_url = $1 WHERE code = 'MOVE'", new.url
                )
            finally:
                await conn.close()
            changed_at = time.monotonic()
            await asyncio.sleep(5.0)
            second = event_dict(test_id="MV2", tracking_code="MOVE")
            await publish(stack.bootstrap, stack.events_topic, [second])
            await new.wait_for(1)
            assert time.monotonic() - changed_at < 10
    finally:
        await old.stop()
        await new.stop()
    assert [orjson.loads(r.data)["TestID"] for r in old.requests] == ["MV1"]
    assert [orjson.loads(r.data)["TestID"] for r in new.requests] == ["MV2"]


async def wait_for_log(logs: list[dict[str, Any]], event: str) -> None:
    """Wait until ``event`` was logged; capture_logs fills a plain list, so poll it."""
    async with asyncio.timeout(20):
        while not any(e["event"] == event for e in logs):
            await asyncio.sleep(0.05)


async def test_events_wait_while_postgres_is_away_and_go_out_when_it_returns(
    stack: Stack, receiver: Receiver
) -> None:
    """Events that cannot reach Postgres wait (first for the partition's waiting deliveries,
    then for their tracking codes): nothing is skipped, failed or committed, the log says
    what the service waits for, and every webhook goes out once Postgres answers again."""
    await add_tracking_code(stack.database_url, "AWAY", receiver.url)
    target = urlsplit(stack.database_url)
    proxy = PostgresProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    through_proxy = target._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl()
    await proxy.stop()
    events = [event_dict(test_id=f"AWAY{i}", tracking_code="AWAY") for i in range(5)]
    await publish(stack.bootstrap, stack.events_topic, events)
    try:
        with capture_logs() as logs:
            async with (
                running_service(stack.settings(DATABASE_URL=through_proxy)),
                TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            ):
                await wait_for_log(logs, "schedule_unavailable")
                assert await outcomes.read_for(1.0) == []  # the schedule keeps failing meanwhile
                assert receiver.requests == []
                await proxy.start()
                await outcomes.until(final_for({e["event_id"] for e in events}))
    finally:
        await proxy.stop()
    assert {doc["outcome"] for doc in outcomes.values()} == {"delivered"}
    assert len(receiver.requests) == len(events)
    [waiting] = [e for e in logs if e["event"] == "schedule_unavailable"]
    assert waiting["waiting_for"] == "Postgres"
    assert any(e["event"] == "schedule_recovered" for e in logs)


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
async def test_events_from_a_compressing_producer_are_delivered(
    stack: Stack, receiver: Receiver, compression: str
) -> None:
    """Upstream producers may compress their batches with any codec Kafka offers."""
    await add_tracking_code(stack.database_url, "ZIP", receiver.url)
    event = event_dict(test_id=f"ZIP{compression}", tracking_code="ZIP")
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, compression_type=compression)
    await producer.start()
    try:
        await producer.send_and_wait(
            stack.events_topic, orjson.dumps(event), key=event["test_id"].encode()
        )
    finally:
        await producer.stop()
    async with (
        running_service(stack.settings()),
        TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
    ):
        await outcomes.until(final_for({event["event_id"]}))
    assert [doc["outcome"] for doc in outcomes.values()] == ["delivered"]


async def test_an_invalid_event_of_several_megabytes_is_dead_lettered_whole(
    stack: Stack,
) -> None:
    """The dead-letter topic the service creates takes any record up to 16 MiB, and its
    producer sends one: a 3 MB invalid event is copied there unchanged."""
    events_topic = f"test-big-events-{uuid.uuid4().hex}"
    dlq_topic = f"test-big-dlq-{uuid.uuid4().hex}"
    await ensure_topics(
        stack.bootstrap, [events_topic], 1, 1, {events_topic: {"max.message.bytes": "4194304"}}
    )
    big = dataclasses.replace(stack, events_topic=events_topic, dlq_topic=dlq_topic)
    value = b'{"padding": "' + b"x" * 3_000_000 + b'"'  # truncated JSON
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=4194304)
    await producer.start()
    try:
        await producer.send_and_wait(events_topic, value=value, key=b"BIG")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        async with running_service(big.settings()):
            # A reader subscribing first would have the broker auto-create the topic.
            async with asyncio.timeout(20):
                while dlq_topic not in await admin.list_topics():
                    await asyncio.sleep(0.1)
            async with TopicReader(stack.bootstrap, dlq_topic) as dlq:
                await dlq.until(lambda records: len(records) >= 1)
        assert dlq.records[0].value == value
        assert b"JSON" in dict(dlq.records[0].headers)["error"]
    finally:
        await admin.delete_topics([events_topic, dlq_topic])
        await admin.close()
