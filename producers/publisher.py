"""Publish exam events to ``exam-events`` (aiokafka only).

``EventPublisher`` wraps one idempotent ``AIOKafkaProducer`` with ``acks=all``: a publish
returns once the broker has acknowledged the record. Every event is validated with the
consumer's parser before it is handed to the producer, so an invalid event raises
``InvalidEvent`` and nothing is sent; ``publish_raw`` is the one way around that check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from consumer.events import parse_event
from consumer.settings import Settings
from producers.builder import EncodedEvent, ExamEventMessage

__all__ = ["Delivery", "EventPublisher", "Publishable", "PublisherSettings"]

Publishable = ExamEventMessage | EncodedEvent

_SETTING_NAMES: Final = ("KAFKA_BOOTSTRAP_SERVERS", "EXAM_EVENTS_TOPIC")


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    """Where events go: the broker and the input topic."""

    bootstrap_servers: str
    topic: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PublisherSettings:
        """``KAFKA_BOOTSTRAP_SERVERS`` and ``EXAM_EVENTS_TOPIC``, with the consumer's defaults
        and rules; no other setting is read. Raises ``ConfigError`` naming the bad one."""
        relevant = {name: environ[name] for name in _SETTING_NAMES if name in environ}
        settings = Settings.from_env(relevant)
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=settings.exam_events_topic,
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored a record."""

    topic: str
    partition: int
    offset: int


class EventPublisher:
    """Publishes validated exam events; use ``async with`` or ``start()`` / ``close()``."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "itep-events",
        linger_ms: int = 5,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    @classmethod
    def from_settings(cls, settings: PublisherSettings) -> EventPublisher:
        return cls(settings.bootstrap_servers, settings.topic)

    async def start(self) -> None:
        """Connect to the broker. The producer is made here because aiokafka needs a loop."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self._client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def close(self) -> None:
        """Flush what is pending and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(self, event: Publishable) -> Delivery:
        """Validate and publish one event; returns once the broker acknowledged it.

        Raises ``InvalidEvent`` (nothing sent) when the event breaks a contract rule.
        """
        record = _validated(event)
        return await self._send(record.key, record.value)

    async def publish_many(self, events: Iterable[Publishable]) -> list[Delivery]:
        """Validate every event, then send them all at once and wait for every acknowledgement.

        If any event is invalid, ``InvalidEvent`` is raised and none is sent. Events with the
        same test id keep their order (same key, same partition, idempotent producer).
        Deliveries come back in the order of ``events``.
        """
        return await (await self.enqueue_many(events))

    async def enqueue_many(self, events: Iterable[Publishable]) -> asyncio.Task[list[Delivery]]:
        """Validate every event and hand them to the producer in order, without waiting for
        the broker; the returned task resolves to their deliveries and must be awaited.

        Lets a caller prepare the next batch while this one is in flight. If any event is
        invalid, ``InvalidEvent`` is raised and none is sent.
        """
        records = [_validated(event) for event in events]
        producer = self._started()
        pending = [
            await producer.send(self.topic, value=record.value, key=record.key)
            for record in records
        ]
        return asyncio.create_task(_deliveries(pending))

    async def publish_raw(self, key: bytes | None, value: bytes | None) -> Delivery:
        """Publish bytes as they are, unvalidated: for sending a deliberately invalid event."""
        return await self._send(key, value)

    async def _send(self, key: bytes | None, value: bytes | None) -> Delivery:
        meta = await self._started().send_and_wait(self.topic, value=value, key=key)
        return Delivery(meta.topic, meta.partition, meta.offset)

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("EventPublisher is not started; use start() or async with")
        return self._producer


async def _deliveries(pending: list[asyncio.Future[RecordMetadata]]) -> list[Delivery]:
    metadata = await asyncio.gather(*pending)
    return [Delivery(meta.topic, meta.partition, meta.offset) for meta in metadata]


def _validated(event: Publishable) -> EncodedEvent:
    if isinstance(event, ExamEventMessage):
        return event.encode()
    # An EncodedEvent can be built by hand, so its bytes are checked again.
    parse_event(event.value, event.key)
    return event
