"""`make demo`: the product end to end on the local stack, explained by its own output.

Seeds tracking codes, starts a receiver that prints every webhook, runs the consumer as a
real process, publishes events covering every trigger, a skipped, an ignored and an invalid
one, then prints the outcomes and stops the consumer the clean way (SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from consumer.events import Results, SectionResult
from consumer.settings import Settings
from producers.builder import ExamEventMessage
from producers.publisher import EventPublisher

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_ZGVtby1zaWduaW5nLXNlY3JldC0xMjM0NTY3ODk="
RUN = uuid.uuid4().hex[:8]


def say(text: str = "") -> None:
    print(text, flush=True)


class DemoReceiver:
    """A partner's endpoint: prints what arrives; `/flaky` answers 503 once, then 200."""

    def __init__(self) -> None:
        self.count = 0
        self.flaky_seen: set[str] = set()
        self.complete_body: bytes | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = await request.post()
        data = orjson.loads(str(form["data"]))
        self.count += 1
        auth = request.headers.get("Authorization", "").split(" ")[0] or "none"
        if "X-Api-Key" in request.headers:
            auth = "X-Api-Key header"
        signature = "unsigned"
        if "webhook-signature" in request.headers:
            try:
                Webhook(SECRET).verify(body, dict(request.headers), json_parse=False)
                signature = "valid signature"
            except WebhookVerificationError:
                signature = "BAD SIGNATURE"
        extra = {k: v for k, v in form.items() if k != "data"}
        if data["Status"] == "Complete" and self.complete_body is None:
            self.complete_body = body
        say(
            f"  [receiver {request.path}] {data['TestID']} Status={data['Status']} "
            f"TestDate={data['TestDate']} Overall_Level={data['Overall_Level']!r} "
            f"auth={auth} {signature}" + (f" extra={extra}" if extra else "")
        )
        webhook_id = request.headers["webhook-id"]
        if request.path == "/flaky" and webhook_id not in self.flaky_seen:
            self.flaky_seen.add(webhook_id)
            say(f"  [receiver {request.path}] answering 503 Retry-After: 1 (first try)")
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def seed_tracking_codes(dsn: str, base: str) -> None:
    rows = [
        (
            "DEMO-UNI",
            f"{base}/uni",
            "basic",
            {"username": "acme", "password": "demo-password"},
            {},
            SECRET,
            True,
            True,
        ),
        (
            "DEMO-AGENCY",
            f"{base}/agency",
            "bearer",
            {"token": "demo-token"},
            {"partner": "Agency & Co"},
            None,
            False,
            True,
        ),
        (
            "DEMO-FLAKY",
            f"{base}/flaky",
            "header",
            {"name": "X-Api-Key", "value": "demo-key"},
            {},
            None,
            False,
            True,
        ),
        ("DEMO-PAUSED", f"{base}/paused", "none", {}, {}, None, False, False),
    ]
    conn = await asyncpg.connect(dsn)
    try:
        for code, url, method, params, extra, secret, on_finished, active in rows:
            await conn.execute(
                """
                INSERT INTO tracking_codes (code, endpoint_url, auth_method, auth_params,
                    extra_fields, signing_secret, call_on_finished, active)
                VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8)
                ON CONFLICT (code) DO UPDATE SET endpoint_url = EXCLUDED.endpoint_url,
                    auth_method = EXCLUDED.auth_method, auth_params = EXCLUDED.auth_params,
                    extra_fields = EXCLUDED.extra_fields,
                    signing_secret = EXCLUDED.signing_secret,
                    call_on_finished = EXCLUDED.call_on_finished, active = EXCLUDED.active
                """,
                code,
                url,
                method,
                orjson.dumps(params).decode(),
                orjson.dumps(extra).decode(),
                secret,
                on_finished,
                active,
            )
            flags = ", ".join(
                part
                for part in (
                    f"auth {method}",
                    "signed" if secret else "",
                    "call_on_finished" if on_finished else "",
                    "INACTIVE" if not active else "",
                    f"extra_fields {extra}" if extra else "",
                )
                if part
            )
            say(f"  {code:<12} -> {url:<32} {flags}")
    finally:
        await conn.close()


def sample_events() -> list[tuple[str, ExamEventMessage]]:
    results = Results(
        score_report_url="https://results.example.org/r/T1001?sig=a+b&x=1",
        overall_level=4.3,
        overall_cefr="B2",
        sections={
            "grammar": SectionResult(level=4.0, score=41, percent=67, cefr="B1"),
            "writing": SectionResult(level=3.0, score=62, percent=62, cefr="B1", question_count=2),
        },
    )
    finished = date(2026, 11, 24)
    return [
        (
            "finished (DEMO-UNI asks for it)",
            ExamEventMessage(
                test_id="T1001",
                oid="crm-1",
                tracking_code="DEMO-UNI",
                status="Finished",
                previous_status="Incomplete",
                duration_minutes=87,
                finished_on=finished,
            ),
        ),
        (
            "completed, with scores",
            ExamEventMessage(
                test_id="T1001",
                oid="crm-1",
                tracking_code="DEMO-UNI",
                status="Complete",
                previous_status="Review",
                duration_minutes=87,
                finished_on=finished,
                results=results,
            ),
        ),
        (
            "technical issue (legacy name)",
            ExamEventMessage(
                test_id="T1002",
                oid="crm-2",
                tracking_code="DEMO-AGENCY",
                status="Technical Difficulty",
                previous_status="Incomplete",
                duration_minutes=12,
            ),
        ),
        (
            "reset",
            ExamEventMessage(
                test_id="T1002",
                oid="crm-2",
                tracking_code="DEMO-AGENCY",
                event_type="reset",
                reset_type="full",
                status="Ready",
                previous_status="Problem",
            ),
        ),
        (
            "invalidated, receiver fails once",
            ExamEventMessage(
                test_id="T1003",
                oid="crm-3",
                tracking_code="DEMO-FLAKY",
                status="Invalidated",
                previous_status="Review",
                duration_minutes=64,
            ),
        ),
        (
            "completed, inactive code",
            ExamEventMessage(
                test_id="T1004",
                tracking_code="DEMO-PAUSED",
                status="Complete",
                previous_status="Review",
                duration_minutes=70,
                results=results,
            ),
        ),
        (
            "completed, unknown code",
            ExamEventMessage(
                test_id="T1005",
                tracking_code="NOBODY",
                status="Complete",
                previous_status="Review",
                duration_minutes=70,
                results=results,
            ),
        ),
        (
            "review: not a trigger",
            ExamEventMessage(
                test_id="T1006",
                tracking_code="DEMO-UNI",
                status="Review",
                previous_status="Finished",
                duration_minutes=50,
            ),
        ),
    ]


async def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 3, 1) for n in names])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def read_dead_letters(bootstrap: str, topic: str) -> list[dict[str, str]]:
    """The headers of every record on the dead-letter topic."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=2000)
    finally:
        await consumer.stop()
    return [
        {k: v.decode() for k, v in record.headers}
        for records in batch.values()
        for record in records
    ]


async def read_outcomes(
    bootstrap: str, topic: str, expected: set[str], within: float
) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    outcomes: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=250)
            for records in batch.values():
                outcomes.extend(orjson.loads(r.value) for r in records)
            finals = {o["event_id"] for o in outcomes if o["outcome"] != "retry_scheduled"}
            if expected <= finals:
                break
    finally:
        await consumer.stop()
    return outcomes


def show_outcomes(outcomes: list[dict[str, Any]]) -> None:
    say(
        f"  {'test':<6} {'trigger':<16} {'outcome':<16} {'reason':<24} {'try':>3} {'http':>4}"
        f" {'ms':>6}"
    )
    for o in outcomes:
        latency = f"{o['latency_ms']:.1f}" if o["latency_ms"] is not None else ""
        say(
            f"  {o['test_id'] or '':<6} {o['trigger'] or '-':<16} {o['outcome']:<16}"
            f" {o['reason'] or '':<24} {o['attempt']:>3} {o['http_status'] or '':>4}"
            f" {latency:>6}"
        )


def show_form(body: bytes) -> None:
    say("\n  The Complete webhook's body, as PHP's $_POST would see it:")
    for name, value in parse_qsl(body.decode("ascii")):
        shown = value
        if name == "data":  # one JSON string; indented here for reading
            shown = orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
        say(f"  {name} = " + shown.replace("\n", "\n    "))


async def main() -> int:
    base = Settings.from_env(os.environ)
    topics = {
        "EXAM_EVENTS_TOPIC": f"demo-{RUN}-exam-events",
        "OUTCOMES_TOPIC": f"demo-{RUN}-webhook-outcomes",
        "DEAD_LETTER_TOPIC": f"demo-{RUN}-exam-events-dlq",
    }
    say("== itep-webhooks demo ==")
    say(
        f"Kafka {base.kafka_bootstrap_servers}, Postgres database itep_webhooks; "
        f"topics for this run: {', '.join(topics.values())}"
    )
    await create_topics(base.kafka_bootstrap_servers, list(topics.values()))

    receiver = DemoReceiver()
    await receiver.start()
    say(f"\n1. A partner receiver listens on {receiver.url} and prints every webhook.")
    say("\n2. Tracking codes (table tracking_codes) say where and how to send:")
    await seed_tracking_codes(base.database_url, receiver.url)

    log_path = ROOT / ".local" / "demo-consumer.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **topics,
        "CONSUMER_GROUP": f"demo-{RUN}",
        "ALLOW_PRIVATE_ENDPOINTS": "true",
        "RETRY_SCHEDULE": "1s,5m,30m,2h,5h,10h,10h",
        "LOG_FORMAT": "json",
        "HTTP_PORT": "0",
    }
    with log_path.open("wb") as log_file:
        consumer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            "run",
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
    say(
        f"\n3. The consumer runs as `itep-webhooks run` (pid {consumer.pid}, logs in "
        f"{log_path.relative_to(ROOT)})."
    )

    events = sample_events()
    say(f"\n4. Upstream publishes {len(events) + 1} events to {topics['EXAM_EVENTS_TOPIC']}:")
    async with EventPublisher(
        base.kafka_bootstrap_servers, topics["EXAM_EVENTS_TOPIC"]
    ) as publisher:
        for label, event in events:
            await publisher.publish(event)
            say(
                f"  {event.test_id} {event.previous_status or '-':>20} -> {event.status:<20}"
                f" {event.tracking_code or '-':<12} {label}"
            )
        invalid = orjson.dumps(
            {
                **events[1][1].to_document(),
                "test_id": "T1007",
                "event_id": f"bad-{RUN}",
                "duration_minutes": -3,
            }
        )
        await publisher.publish_raw(b"T1007", invalid)
        say(f"  T1007 {'':>20}    {'':<20} {'':<12} invalid: duration_minutes = -3")
    say("\n5. What the receiver got:")

    expected = {e.event_id for label, e in events if "not a trigger" not in label}
    expected.add(f"bad-{RUN}")
    outcomes = await read_outcomes(
        base.kafka_bootstrap_servers, topics["OUTCOMES_TOPIC"], expected, within=60
    )
    consumer.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(consumer.wait(), 60)
    await receiver.stop()

    say(f"\n6. Outcomes on {topics['OUTCOMES_TOPIC']} (one final per trigger event):")
    show_outcomes(outcomes)
    finals = {o["event_id"] for o in outcomes if o["outcome"] != "retry_scheduled"}
    missing = expected - finals
    say("\n  T1006 (Review) is not a trigger: no webhook, no outcome, only a metric.")
    dead = await read_dead_letters(base.kafka_bootstrap_servers, topics["DEAD_LETTER_TOPIC"])
    for headers in dead:
        say(
            f"  Dead-lettered to {topics['DEAD_LETTER_TOPIC']}, bytes unchanged: "
            f"error={headers.get('error')!r} source={headers.get('source')!r}"
        )
    if receiver.complete_body is not None:
        show_form(receiver.complete_body)
    say(f"\n7. Consumer stopped with SIGTERM: drained, committed, exit code {code}.")
    await delete_topics(base.kafka_bootstrap_servers, list(topics.values()))
    if missing or code != 0:
        say(f"DEMO FAILED: missing outcomes for {sorted(missing)}, exit code {code}")
        return 1
    say(f"Demo complete: {receiver.count} webhooks received, {len(outcomes)} outcome records.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
