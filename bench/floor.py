"""The Kafka floor: a bare consumer timing publication to poll, and posting each event on.

Run as ``python -m bench.floor``.

The latency scenario starts it as its own process once the service's phases are over and
the service stopped, on the same topic, with a consumer group of its own, and publishes at
the same rates for the same time again. One ``AIOKafkaConsumer`` on uvloop, reading from
the end of the topic, loops on ``getmany(timeout_ms=100, max_records=500)``: for each
record it takes the stamp ``lat:<label>:<ns>`` that the producer put into the event's
``oid`` (found with a regular expression on the raw value, the event is not parsed) and
keeps, under that label, ``time.time()`` taken when ``getmany`` returned minus the stamp,
in ms. That is what the producer's linger, the ``acks=all`` round trip and the fetch cost
before any relay can start its work: no relay's latency can go below it.

With ``--post URL`` (one per tracking code) it also POSTs each stamped event on as it is
polled, through the service's own HTTP client (``WebhookSender``), to the URLs in turn, in a
task of its own: a form body ``data={"OID": <the stamp>}`` and nothing else (no parse, no
lookup, no signature, no outcome, no commit). The receiver times those arrivals as it times
the service's: publication to receipt for the bare minimum of a relay, Kafka and one HTTP
hop, which is the floor the service's own figures compare with.

It writes ``ready`` on a line of its own once it has its partitions and their positions
(so events published after that are all seen), and on SIGTERM or SIGINT the JSON
``{"samples": {label: [ms, ...]}}`` for every label seen to the file ``--out`` (megabytes
for a full run: a file, not the pipe, which cut a line that size short).

``FloorProcess`` starts one from the benchmark, reads its CPU, stops it and reads its samples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from itertools import cycle
from pathlib import Path
from typing import Final

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer

from bench.procs import ProcessTree
from bench.stack import ROOT
from consumer.delivery.sender import WebhookSender
from consumer.delivery.webhook import FORM_CONTENT_TYPE, WebhookRequest
from consumer.payload import form_body

# The stamp as orjson writes the event: ``"oid":"lat:<label>:<time.time_ns()>"``.
_STAMP: Final = re.compile(rb'"oid":"lat:([^:"]+):(\d+)"')
POLL_MS: Final = 100
MAX_RECORDS: Final = 500


Stamp = tuple[str, int]  # (label, publication ns)


def stamp_of(value: bytes) -> Stamp | None:
    """The event's stamp when its ``oid`` is one, else None."""
    match = _STAMP.search(value)
    if match is None:
        return None
    return match[1].decode(), int(match[2])


def latency_ms(value: bytes, now: float) -> tuple[str, float] | None:
    """(label, ms from the stamp to ``now``) when the event's ``oid`` is a stamp, else None."""
    found = stamp_of(value)
    if found is None:
        return None
    return found[0], (now - found[1] / 1e9) * 1000.0


def add_samples(
    samples: defaultdict[str, list[float]], values: Iterable[bytes | None], now: float
) -> list[Stamp]:
    """Keep one sample per stamped value under its label; values without a stamp are
    skipped. Returns the stamps found, in order."""
    stamps = []
    for value in values:
        found = stamp_of(value) if value is not None else None
        if found is not None:
            samples[found[0]].append((now - found[1] / 1e9) * 1000.0)
            stamps.append(found)
    return stamps


def forward_request(stamp: Stamp, url: str) -> WebhookRequest:
    """The POST that carries ``stamp`` on to ``url``: a form body whose ``data`` JSON holds
    only the stamp, as the ``OID`` a webhook carries it in."""
    oid = f"lat:{stamp[0]}:{stamp[1]}"
    return WebhookRequest(
        url=url,
        headers={"Content-Type": FORM_CONTENT_TYPE},
        body=form_body({"OID": oid}, {}),
        endpoint_host="127.0.0.1",
        webhook_id=oid,
        timestamp=0,
    )


class Forwarder:
    """POSTs stamps on, each in a task of its own, to ``urls`` in turn."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = cycle(urls)
        self._sender = WebhookSender(allow_private_endpoints=True)
        self._tasks: set[asyncio.Task[object]] = set()
        self.failed = 0

    async def __aenter__(self) -> Forwarder:
        await self._sender.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10.0)
        await self._sender.close()

    def forward(self, stamps: Iterable[Stamp]) -> None:
        for stamp in stamps:
            task = asyncio.create_task(self._send(forward_request(stamp, next(self._urls))))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, request: WebhookRequest) -> None:
        result = await self._sender.send(request)
        if result.status != 200:
            self.failed += 1


async def wait_positioned(consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
    """Poll until the group has given this consumer partitions and each has a position."""
    while not consumer.assignment() and not stop.is_set():
        await consumer.getmany(timeout_ms=POLL_MS)
    for partition in consumer.assignment():
        await consumer.position(partition)


async def watch(bootstrap: str, topic: str, group: str, urls: list[str]) -> dict[str, list[float]]:
    """Time every stamped event from the moment the consumer is positioned until SIGTERM,
    and POST it on to ``urls`` when there are any."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    samples: defaultdict[str, list[float]] = defaultdict(list)
    await consumer.start()
    try:
        async with Forwarder(urls) as forwarder:
            await wait_positioned(consumer, stop)
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
                now = time.time()
                for records in batch.values():
                    stamps = add_samples(samples, (record.value for record in records), now)
                    if urls:
                        forwarder.forward(stamps)
        if forwarder.failed:
            sys.stderr.write(f"{forwarder.failed} posts were not answered 200\n")
    finally:
        await consumer.stop()
    return samples


class FloorProcess:
    """A floor consumer of ``topic`` in ``group``, run from the benchmark as its own process;
    it POSTs each stamped event on to ``post`` (URLs in turn) when given."""

    def __init__(self, bootstrap: str, topic: str, group: str, post: Iterable[str] = ()) -> None:
        self.args = ["--bootstrap", bootstrap, "--topic", topic, "--group", group]
        for url in post:
            self.args += ["--post", url]
        self._out: Path | None = None
        self.tree = ProcessTree([])
        self._process: asyncio.subprocess.Process | None = None
        self._log_path: Path | None = None

    async def start(self, log_path: Path, timeout: float = 60.0) -> None:
        """Start it and return once it is positioned (it wrote ``ready``)."""
        self._log_path = log_path
        self._out = log_path.with_suffix(".samples.json")
        self._out.unlink(missing_ok=True)
        with log_path.open("ab") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.floor",
                *self.args,
                "--out",
                str(self._out),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        self.tree = ProcessTree([self._process.pid])
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if line != b"ready\n":
            self._process.kill()
            await self._process.wait()
            raise RuntimeError(f"bench.floor was not ready within {timeout:.0f} s; see {log_path}")

    async def stop(self, timeout: float = 30.0) -> dict[str, list[float]]:
        """SIGTERM it and return its samples: label -> ms from publication to poll."""
        process = self._process
        assert process is not None, "not started"
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"bench.floor failed ({process.returncode}); see {self._log_path}")
        assert self._out is not None
        samples: dict[str, list[float]] = orjson.loads(self._out.read_bytes())["samples"]
        return samples

    async def kill(self) -> None:
        """End it without reading anything (the scenario failed)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the samples go")
    parser.add_argument(
        "--post", action="append", default=[], help="a URL to POST each event on to; repeat"
    )
    args = parser.parse_args()
    samples = uvloop.run(watch(args.bootstrap, args.topic, args.group, args.post))
    args.out.write_bytes(orjson.dumps({"samples": samples}))


if __name__ == "__main__":
    main()
