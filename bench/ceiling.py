"""The limit: a bare client loop POSTing pre-built webhooks, no Kafka, no Postgres.

Run as ``python -m bench.ceiling`` (the limit scenario starts it as its own process) with
the receivers' URLs, one per tracking code. It builds the requests first, exactly as the
service would (``consumer.delivery.webhook.build_body`` / ``build_request``: form body,
Standard Webhooks headers and signature), for the first ``--distinct`` events of the
benchmark's mix, then POSTs ``--count`` of them (cycling) from ``--concurrency`` workers
on uvloop, with at most ``--per-host`` connections to one origin, as the service's
``MAX_IN_FLIGHT_PER_HOST`` allows. It prints one JSON line: requests, seconds, and the CPU
(user + system, from ``getrusage``) this process used while POSTing, building excluded.

``--client aiohttp`` (the default) POSTs with an aiohttp ``ClientSession``, the issue's
reference. ``--client sender`` POSTs with the service's own ``WebhookSender``, which also
stamps and signs each request as it goes out, as in the service: the floor of the client
the service uses, so the service's overhead beyond its client can be read off.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Coroutine
from itertools import cycle
from typing import Any

import aiohttp
import orjson
import uvloop

from bench.events import EventMix
from bench.stack import SIGNING_SECRET
from consumer.delivery.sender import WebhookSender
from consumer.delivery.webhook import WebhookRequest, build_body, build_request
from consumer.events import parse_event
from consumer.tracking_codes import TrackingCode


def prepare(urls: list[str], tests: int, distinct: int) -> list[WebhookRequest]:
    codes = [f"LIMIT{i:02d}" for i in range(len(urls))]
    tracking = {
        name: TrackingCode(code=name, endpoint_url=url, signing_secret=SIGNING_SECRET)
        for name, url in zip(codes, urls, strict=True)
    }
    encode = EventMix(run="limit", codes=codes, tests=tests).encoder()
    now = int(time.time())
    out: list[WebhookRequest] = []
    for i in range(distinct):
        key, value, _ = encode(i, f"crm-{i}")
        event = parse_event(value, key)
        code = tracking[event.tracking_code or ""]
        out.append(build_request(event, code, build_body(event, code), now))
    return out


async def _measured(workers: list[Coroutine[Any, Any, None]]) -> tuple[float, float]:
    """Run ``workers`` to the end: wall seconds, and this process's CPU seconds meanwhile."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*workers)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


async def post_all(
    requests: list[WebhookRequest], count: int, concurrency: int, per_host: int
) -> dict[str, float]:
    """Through one aiohttp ``ClientSession``, the bodies and headers exactly as built."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=per_host)
    async with aiohttp.ClientSession(connector=connector) as session:
        source = iter(range(count))
        items = cycle(requests)
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for _ in source:
                item = next(items)
                async with session.post(item.url, data=item.body, headers=item.headers) as resp:
                    await resp.read()
                    failures += resp.status != 200

        seconds, cpu = await _measured([worker() for _ in range(concurrency)])
    return {"requests": count, "seconds": seconds, "cpu": cpu, "failures": failures}


async def send_all(
    requests: list[WebhookRequest], count: int, concurrency: int
) -> dict[str, float]:
    """Through the service's ``WebhookSender`` (its default per-origin limit, which the
    workers never exceed); it stamps and signs each request as it goes out."""
    async with WebhookSender(allow_private_endpoints=True) as sender:
        source = iter(range(count))
        items = cycle(requests)
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for _ in source:
                result = await sender.send(next(items))
                failures += result.status != 200

        seconds, cpu = await _measured([worker() for _ in range(concurrency)])
    return {"requests": count, "seconds": seconds, "cpu": cpu, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--urls", required=True, help="comma-separated, one per code")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tests", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--per-host", type=int, required=True)
    parser.add_argument("--client", choices=("aiohttp", "sender"), default="aiohttp")
    args = parser.parse_args()
    requests = prepare(args.urls.split(","), args.tests, min(args.distinct, args.count))
    if args.client == "sender":
        result = uvloop.run(send_all(requests, args.count, args.concurrency))
    else:
        result = uvloop.run(post_all(requests, args.count, args.concurrency, args.per_host))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
