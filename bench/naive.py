"""The naive baseline: the consumer a team writes first. Run as ``python -m bench.naive``.

One aiokafka consumer, one event at a time: get one, look up its tracking code (one asyncpg
query the first time, a dict after), build the signed webhook with the service's own pure
code, POST it with aiohttp, wait for the answer, commit that offset, next. No concurrency,
no retries, no outcomes, no dead letters. It is what the service's design is measured
against: the same work per webhook, done one at a time.
"""

from __future__ import annotations

import argparse
import os
import time

import aiohttp
import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from consumer.delivery.webhook import build_body, build_request
from consumer.events import parse_event
from consumer.tracking_codes import TrackingCode


async def relay(bootstrap: str, topic: str, group: str, dsn: str) -> None:
    db = await asyncpg.connect(dsn)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    codes: dict[str, TrackingCode] = {}
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                record = await consumer.getone()
                event = parse_event(record.value, record.key)
                name = event.tracking_code or ""
                code = codes.get(name)
                if code is None:
                    row = await db.fetchrow(
                        "SELECT endpoint_url, signing_secret, extra_fields"
                        " FROM tracking_codes WHERE code = $1",
                        name,
                    )
                    assert row is not None, name
                    code = TrackingCode(
                        code=name,
                        endpoint_url=row["endpoint_url"],
                        signing_secret=row["signing_secret"],
                        extra_fields=orjson.loads(row["extra_fields"]),
                    )
                    codes[name] = code
                request = build_request(event, code, build_body(event, code), int(time.time()))
                async with session.post(
                    request.url, data=request.body, headers=dict(request.headers)
                ) as response:
                    await response.read()
                tp = TopicPartition(record.topic, record.partition)
                await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
    finally:
        await consumer.stop()
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/itep_webhooks")
    # Ended by SIGTERM, like a container's process: the default action, no clean-up needed.
    uvloop.run(relay(bootstrap, args.topic, args.group, dsn))


if __name__ == "__main__":
    main()
