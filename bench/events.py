"""The benchmark's events and the producers that put them on the input topic.

Every event is a Complete status change (a trigger) with all five sections, as the contract
shows it. Event i belongs to test ``i % tests``; a test's events go to partition
``test % 6`` (the service keys nothing on the partition, only on the test id), and the test
to tracking code ``(test // 6) % codes``, so each test keeps one code and every partition
carries every code evenly, as it would with real test ids hashed to partitions. (With
``test % codes``, a code's parity followed its partitions': the two processes of
``--processes 2``, given partitions 0, 2, 4 and 1, 3, 5, each saw 10 of the 20 codes.) The
values are pre-encoded with orjson from one template that ``producers.builder`` validated
with the consumer's own parser, and sent with a raw aiokafka producer in large batches, so a
backlog of a million events is written in well under a minute.

``PacedProducer`` publishes at a steady rate for the latency scenario: on a fixed schedule
(event k is due at start + k / rate, whatever the loop's drift), each event stamped with
``time.time_ns()`` in its ``oid`` just before it is handed to the producer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer

from bench.stack import PARTITIONS
from consumer.events import Results, SectionResult, parse_event
from producers.builder import ExamEventMessage

CHUNK: Final = 20_000
_RESULTS: Final = Results(
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


@dataclass(frozen=True, slots=True)
class EventMix:
    """Which test and code event i has: ``tests`` test ids over ``codes`` tracking codes."""

    run: str
    codes: Sequence[str]
    tests: int

    def template(self) -> dict[str, Any]:
        message = ExamEventMessage(
            test_id="B0",
            status="Complete",
            previous_status="Review",
            tracking_code=self.codes[0],
            duration_minutes=80,
            finished_on="2026-11-24",
            results=_RESULTS,
            occurred_at="2026-11-25T16:02:11Z",
        )
        return message.to_document()

    def encoder(self) -> Callable[[int, str], tuple[bytes, bytes, int]]:
        """``encode(i, oid) -> (key, value, partition)``; the first event is validated."""
        template = self.template()
        codes, tests, run = list(self.codes), self.tests, self.run
        dumps = orjson.dumps

        def encode(i: int, oid: str) -> tuple[bytes, bytes, int]:
            test = i % tests
            test_id = f"B{run}T{test:07d}"
            doc = {
                **template,
                "event_id": f"{run}-{i}",
                "test_id": test_id,
                "oid": oid,
                "tracking_code": codes[(test // PARTITIONS) % len(codes)],
            }
            return test_id.encode(), dumps(doc), test % PARTITIONS

        key, value, _ = encode(0, "crm-0")
        parse_event(value, key)  # raises InvalidEvent if the template breaks a rule
        return encode


def new_producer(bootstrap: str, *, bulk: bool) -> AIOKafkaProducer:
    """Bulk: big batches, leader acks (loading a backlog). Else as ``producers`` publishes:
    idempotent, ``acks=all``, 5 ms linger."""
    if bulk:
        return AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks=1,
            linger_ms=50,
            max_batch_size=1 << 20,
            max_request_size=8 << 20,
        )
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )


async def publish_backlog(
    bootstrap: str, topic: str, mix: EventMix, count: int, say: Callable[[str], None]
) -> float:
    """Write ``count`` events as fast as the broker takes them; returns the seconds taken."""
    encode = mix.encoder()
    producer = new_producer(bootstrap, bulk=True)
    await producer.start()
    started = shown = time.monotonic()
    try:
        for first in range(0, count, CHUNK):
            pending = []
            for i in range(first, min(first + CHUNK, count)):
                key, value, partition = encode(i, f"crm-{i}")
                pending.append(await producer.send(topic, value, key=key, partition=partition))
            await asyncio.gather(*pending)
            if time.monotonic() - shown >= 5.0:
                shown = time.monotonic()
                say(f"published {min(first + CHUNK, count):,}/{count:,} events")
    finally:
        await producer.stop()
    return time.monotonic() - started


class PacedProducer:
    """Publishes stamped events at a steady rate; ``async with`` starts and stops it."""

    def __init__(self, bootstrap: str, topic: str, mix: EventMix) -> None:
        self.topic = topic
        self._encode = mix.encoder()
        self._producer = new_producer(bootstrap, bulk=False)
        self._next = 0
        self._pending: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> PacedProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*self._pending)
        await self._producer.stop()

    async def run(self, label: str, rate: float, seconds: float) -> int:
        """``rate`` events/s for ``seconds``, stamped ``lat:<label>:<ns>``; returns the count.

        Each turn sends every event due by now, then sleeps until the next is due (at least
        2 ms), so the rate holds however long a turn takes.
        """
        loop = asyncio.get_running_loop()
        total = round(rate * seconds)
        start = loop.time()
        sent = 0
        while sent < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            while sent < due:
                key, value, partition = self._encode(self._next, f"lat:{label}:{time.time_ns()}")
                self._pending.append(
                    await self._producer.send(self.topic, value, key=key, partition=partition)
                )
                self._next += 1
                sent += 1
            if len(self._pending) > 1000:
                done = [f for f in self._pending if f.done()]
                for future in done:
                    future.result()  # an error of the broker surfaces here
                self._pending = [f for f in self._pending if not f.done()]
            await asyncio.sleep(max(0.002, start + sent / rate - loop.time()))
        return total
