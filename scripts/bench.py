"""`make bench`: how close the pipeline comes to what this machine can do.

Three figures, measured in one run on the local stack:
1. the pure core: events parsed, decided and turned into form bodies per second, one core;
2. the ceiling: a bare aiohttp client POSTing the same form bodies to the same receiver
   process, at the same concurrency the service may use towards one host;
3. the pipeline: the real service (`python -m consumer run`, its own process) consuming
   N trigger events from Kafka, looking up the tracking code in Postgres, POSTing each to
   that receiver and publishing each outcome; webhooks/s from first to last outcome.
The receiver is a separate process, so neither client shares its event loop with it.
Figures on a shared 2-core machine are noisy: compare the ratios of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.delivery.webhook import build_body, build_request
from consumer.events import Results, SectionResult, parse_event
from consumer.settings import Settings
from consumer.tracking_codes import TrackingCode
from consumer.triggers import Deliver, decide
from producers.builder import ExamEventMessage
from producers.publisher import EventPublisher

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_receiver(port: int) -> None:
    """The partner endpoint: reads the form and answers 200."""

    async def handle(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def make_events(count: int, tests: int) -> list[ExamEventMessage]:
    results = Results(
        score_report_url="https://results.example.org/r/x?sig=a+b&x=1",
        overall_level=4.3,
        overall_cefr="B2",
        sections={
            name: SectionResult(
                level=4.0,
                score=60,
                percent=60,
                cefr="B1",
                question_count=2 if name == "writing" else None,
            )
            for name in ("grammar", "listening", "reading", "writing", "speaking")
        },
    )
    return [
        ExamEventMessage(
            test_id=f"B{i % tests:06d}",
            oid=f"crm-{i}",
            tracking_code="BENCH",
            status="Complete",
            previous_status="Review",
            duration_minutes=80,
            finished_on="2026-11-24",
            results=results,
        )
        for i in range(count)
    ]


def bench_core(events: list[ExamEventMessage], code: TrackingCode) -> float:
    """Events per second through parse -> decide -> body -> signed request, no I/O."""
    encoded = [(e.key, e.encode().value) for e in events]
    started = time.perf_counter()
    for key, value in encoded:
        event = parse_event(value, key)
        decision = decide(event, code)
        assert isinstance(decision, Deliver)
        body = build_body(event, code)
        build_request(event, code, body, 1_764_000_000)
    return len(encoded) / (time.perf_counter() - started)


async def bench_ceiling(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Requests per second of a bare aiohttp client at ``concurrency``."""
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - started)


async def setup(settings: Settings, topics: list[str], url: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 6, 1) for t in topics])
    finally:
        await admin.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO tracking_codes (code, endpoint_url, signing_secret) "
            "VALUES ('BENCH', $1, 'whsec_YmVuY2gtc2VjcmV0LWtleS0xMjM0NTY3OA==') "
            "ON CONFLICT (code) DO UPDATE SET endpoint_url = EXCLUDED.endpoint_url",
            url,
        )
    finally:
        await conn.close()


async def bench_pipeline(
    settings: Settings, events: list[ExamEventMessage], url: str
) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    topics = [f"bench-{run}-events", f"bench-{run}-outcomes", f"bench-{run}-dlq"]
    await setup(settings, topics, url)
    async with EventPublisher(settings.kafka_bootstrap_servers, topics[0]) as publisher:
        for start in range(0, len(events), 5000):
            await publisher.publish_many(events[start : start + 5000])
    env = {
        **os.environ,
        "EXAM_EVENTS_TOPIC": topics[0],
        "OUTCOMES_TOPIC": topics[1],
        "DEAD_LETTER_TOPIC": topics[2],
        "CONSUMER_GROUP": f"bench-{run}",
        "ALLOW_PRIVATE_ENDPOINTS": "true",
        # One JSON log line per delivery costs throughput; BENCH_LOG_LEVEL=info measures it.
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "HTTP_PORT": "0",
    }
    consumer = AIOKafkaConsumer(
        topics[1],
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    started = time.perf_counter()
    # BENCH_PROFILE=path.prof runs the service under cProfile and writes its stats there.
    profile = os.environ.get("BENCH_PROFILE")
    profiler = ["-m", "cProfile", "-o", profile] if profile else []
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        *profiler,
        "-m",
        "consumer",
        "run",
        env=env,
        cwd=ROOT,
    )
    first = last = 0.0
    latencies: list[float] = []
    outcomes = 0
    shown = 0.0
    try:
        async with asyncio.timeout(600):
            while outcomes < len(events):
                batch = await consumer.getmany(timeout_ms=500)
                now = time.perf_counter()
                for records in batch.values():
                    for record in records:
                        doc = orjson.loads(record.value)
                        assert doc["outcome"] == "delivered", doc
                        latencies.append(doc["latency_ms"])
                        outcomes += 1
                if batch:
                    first = first or now
                    last = now
                if now - shown >= 1.0:
                    shown = now
                    print(f"  pipeline: {outcomes:,}/{len(events):,} outcomes", flush=True)
    finally:
        service.send_signal(signal.SIGTERM)
        await service.wait()
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        await admin.delete_topics(topics)
        await admin.close()
    latencies.sort()
    return {
        "rate": (outcomes - 1) / (last - first) if last > first else float("nan"),
        "wall": last - started,
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
    }


async def main(count: int, tests: int) -> None:
    settings = Settings.from_env(os.environ)
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--receiver",
        str(port),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/hook"
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        events = make_events(count, tests)
        code = TrackingCode(code="BENCH", endpoint_url=url)
        print(f"itep-webhooks benchmark, {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
            f" Python {platform.python_version()}"
        )
        core = bench_core(events[:20000], code)
        print(f"1. pure core (parse, decide, body, request): {core:,.0f} events/s")
        bodies = [build_body(parse_event(e.encode().value), code) for e in events]
        concurrency = settings.max_in_flight_per_host
        ceiling = await bench_ceiling(url, bodies, concurrency)
        print(
            f"2. ceiling, bare aiohttp POSTs at concurrency {concurrency}: "
            f"{ceiling:,.0f} requests/s"
        )
        result = await bench_pipeline(settings, events, url)
        print(
            f"3. pipeline, {count:,} events over {tests:,} test ids: "
            f"{result['rate']:,.0f} webhooks/s ({result['rate'] / ceiling:.0%} of the "
            f"ceiling); all outcomes {result['wall']:.1f} s after start; POST latency "
            f"p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms"
        )
    finally:
        receiver.send_signal(signal.SIGINT)
        await receiver.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        serve_receiver(args.receiver)
    else:
        asyncio.run(main(args.count, args.tests))
