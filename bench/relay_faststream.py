"""A plain faststream relay, the reference the issue names: ``python -m bench.relay_faststream``.

A ``KafkaBroker`` subscriber with faststream's defaults for acknowledgement (``ACK_FIRST``:
the offset is auto-committed whether or not the webhook went out, so acks come before the
work), ``max_workers`` concurrent handlers, the tracking codes loaded once from Postgres
into a dict, the iTEP body built with the service's own pure code and POSTed with one shared
aiohttp session (at most ``--per-host`` connections to one origin). Nothing else: no
signature, no retry, no outcome, no dead letter. Its logs are faststream's defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import aiohttp
import asyncpg
import orjson
import uvloop
from aiokafka.structs import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from consumer.delivery.webhook import FORM_CONTENT_TYPE, build_body
from consumer.events import parse_event
from consumer.tracking_codes import TrackingCode


async def load_codes(dsn: str, prefix: str) -> dict[str, TrackingCode]:
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            "SELECT code, endpoint_url, extra_fields FROM tracking_codes"
            " WHERE starts_with(code, $1)",
            prefix,
        )
    finally:
        await db.close()
    return {
        row["code"]: TrackingCode(
            code=row["code"],
            endpoint_url=row["endpoint_url"],
            extra_fields=orjson.loads(row["extra_fields"]),
        )
        for row in rows
    }


async def relay(args: argparse.Namespace, bootstrap: str, dsn: str) -> None:
    codes = await load_codes(dsn, args.code_prefix)
    connector = aiohttp.TCPConnector(limit=args.workers, limit_per_host=args.per_host)
    session = aiohttp.ClientSession(connector=connector)
    headers = {"Content-Type": FORM_CONTENT_TYPE}
    broker = KafkaBroker(bootstrap)

    async def handle(message: KafkaMessage) -> None:
        record = message.raw_message
        key = record.key if isinstance(record, ConsumerRecord) else None
        event = parse_event(message.body, key)
        code = codes[event.tracking_code or ""]
        async with session.post(
            code.endpoint_url, data=build_body(event, code), headers=headers
        ) as response:
            await response.read()

    # Registered by a call rather than as a decorator, which mypy cannot see through.
    broker.subscriber(
        args.topic,
        group_id=args.group,
        auto_offset_reset="earliest",
        max_workers=args.workers,
    )(handle)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_faststream")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--code-prefix", required=True)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--per-host", type=int, default=100)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/itep_webhooks")
    uvloop.run(relay(args, bootstrap, dsn))


if __name__ == "__main__":
    main()
