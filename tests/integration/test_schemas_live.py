"""The JSON Schemas against the running service: every event published, every outcome and
dead-letter record it writes and every webhook ``data`` it sends, checked with ``jsonschema``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from tests.factories import event_dict
from tests.integration.harness import (
    Stack,
    TopicReader,
    add_tracking_code,
    final_for,
    running_service,
)
from tests.receiver import Receiver
from tests.schema_strategies import load_schema, validator

pytestmark = pytest.mark.integration

EVENT = validator("exam-event.schema.json")
OUTCOME = validator("outcome.schema.json")
DEAD_LETTER = validator("dead-letter-headers.schema.json")
DATA = validator("webhook-data.schema.json")


def errors_of(checker: Any, instance: object) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in checker.iter_errors(instance)]


def trigger_events() -> list[dict[str, Any]]:
    """One event for each trigger and outcome the service can reach without waiting long."""
    sections = event_dict()["results"]
    return [
        event_dict(
            test_id="FIN1",
            status="Finished",
            previous_status="Incomplete",
            results=None,
            finished_on=None,
            oid="a+b&c=d é",
        ),
        event_dict(test_id="COMP1"),
        event_dict(
            test_id="COMP2",
            status="Completed",
            previous_status=None,
            results={**sections, "sections": {"writing": sections["sections"]["writing"]}},
        ),
        event_dict(test_id="COMP3", results={**sections, "sections": None}),
        event_dict(
            test_id="RESET1",
            event_type="reset",
            reset_type="full",
            status="Ready",
            previous_status="Ready",
        ),
        event_dict(test_id="INV1", status="Invalidated", previous_status="Review"),
        event_dict(
            test_id="TECH1", status="Technical Difficulty", previous_status="Started", oid=""
        ),
        event_dict(test_id="FLAKY1"),
        event_dict(test_id="GONE1", status="Invalidated", previous_status="Review"),
        event_dict(test_id="SKIP1", tracking_code=None),
        event_dict(test_id="SKIP2", tracking_code="NOBODY"),
        event_dict(test_id="SKIP3", tracking_code="OFF"),
    ]


def invalid_records() -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs the service must dead-letter."""
    bad_with_id = event_dict(test_id="BAD1", duration_minutes=-5)
    bad_status = event_dict(test_id="BAD2", status="Done")
    bad_date = event_dict(test_id="BAD3", finished_on="2023-02-29")
    no_id = {**event_dict(test_id="BAD4"), "event_id": ""}
    wrong_key = event_dict(test_id="BAD5")
    return [
        (None, b"{not json"),
        (b"BAD0", b"[1, 2]"),
        (b"BAD1", orjson.dumps(bad_with_id)),
        (b"BAD2", orjson.dumps(bad_status)),
        (b"BAD3", orjson.dumps(bad_date)),
        (b"BAD4", orjson.dumps(no_id)),
        (b"another-test", orjson.dumps(wrong_key)),
    ]


def readable_event_id(value: bytes) -> str | None:
    """The event_id a rejected outcome can carry: a non-empty string in a JSON object."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    event_id = doc.get("event_id") if isinstance(doc, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


async def publish_records(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def test_every_record_the_running_service_reads_and_writes_fits_its_schema(
    stack: Stack,
) -> None:
    """Events in, outcomes, dead letters and webhook data out: each valid against its schema."""
    calls: dict[str, int] = {}

    async def respond(request: web.Request, _n: int) -> web.StreamResponse:
        data = (await request.post())["data"]
        test_id = orjson.loads(str(data))["TestID"]
        calls[test_id] = calls.get(test_id, 0) + 1
        if test_id == "FLAKY1" and calls[test_id] == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if test_id == "GONE1":
            return web.Response(status=404)
        return web.Response(text="ok")

    receiver = await Receiver(respond=respond).start()
    try:
        await add_tracking_code(stack.database_url, "ACME-UNI", receiver.url, call_on_finished=True)
        await add_tracking_code(stack.database_url, "OFF", receiver.url, active=False)
        events = trigger_events()
        silent = event_dict(test_id="QUIET1", status="Review", previous_status="Finished")
        invalid = invalid_records()
        valid = [(str(e["test_id"]).encode(), orjson.dumps(e)) for e in [*events, silent]]
        published = [*valid, *invalid]
        await publish_records(stack.bootstrap, stack.events_topic, published)
        rejected_ids = {i for _, value in invalid if (i := readable_event_id(value))}
        async with (
            running_service(stack.settings()),
            TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes,
            TopicReader(stack.bootstrap, stack.dlq_topic) as dead_letters,
        ):
            await outcomes.until(final_for({e["event_id"] for e in events} | rejected_ids))
            await dead_letters.until(lambda records: len(records) >= len(invalid))
    finally:
        await receiver.stop()

    # Every event published: the schema refuses exactly those dead-lettered, but for the one
    # whose key is not its test_id (the key is outside a JSON document's sight).
    dead_values = {r.value for r in dead_letters.records}
    assert dead_values == {value for _, value in invalid}
    for key, value in published:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            assert value in dead_values  # not JSON: nothing for a schema to judge
            continue
        expected = value not in dead_values or key == b"another-test"
        assert EVENT.is_valid(doc) is expected, (key, errors_of(EVENT, doc))

    # Every outcome record, and every field of it named by the schema.
    declared = set(load_schema("outcome.schema.json")["properties"])
    docs = outcomes.values()
    assert {d["outcome"] for d in docs} == {
        "delivered",
        "failed",
        "skipped",
        "rejected",
        "retry_scheduled",
    }
    for doc in docs:
        assert errors_of(OUTCOME, doc) == [], doc
        assert set(doc) == declared

    # Every dead-letter record's headers, each header once.
    for record in dead_letters.records:
        names = [name for name, _ in record.headers]
        assert len(names) == len(set(names))
        headers = {name: value.decode() for name, value in record.headers}
        assert errors_of(DEAD_LETTER, headers) == [], headers
        assert headers["source"].startswith(f"{stack.events_topic}/")

    # Every webhook data the receiver got, for every status a webhook is sent with.
    data_keys = set(load_schema("webhook-data.schema.json")["properties"])
    sent = [orjson.loads(r.data) for r in receiver.requests]
    assert {d["Status"] for d in sent} == {
        "Finished",
        "Complete",
        "Ready",
        "Invalidated",
        "Problem",
    }
    for data in sent:
        assert errors_of(DATA, data) == [], data
        assert set(data) <= data_keys
