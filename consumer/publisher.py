"""Outcome and dead-letter records to Kafka (aiokafka only).

One idempotent producer with ``acks=all``: an outcome counts as published when the
broker has acknowledged it, and only then may the event's offset be committed.
"""

from __future__ import annotations

from types import TracebackType
from typing import Final

from aiokafka import AIOKafkaProducer

from consumer.outcomes import OutcomeRecord

MAX_RECORD_BYTES: Final = 16 * 1024 * 1024


class OutcomePublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        outcomes_topic: str,
        dead_letter_topic: str,
        *,
        linger_ms: int = 5,
        max_batch_size: int = 512 * 1024,
        metadata_max_age_ms: int = 300_000,
    ) -> None:
        self.outcomes_topic = outcomes_topic
        self.dead_letter_topic = dead_letter_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
            # An idempotent aiokafka producer keeps one batch in flight per partition and
            # makes senders wait while that batch is full; at the default 16 KiB (about 40
            # outcomes) the outcome topic capped throughput (measured with make bench).
            max_batch_size=max_batch_size,
            client_id="itep-webhooks-outcomes",
            # A dead-letter copy is as large as the event it copies: allow any record the
            # dead-letter topic takes (the service creates it with this limit).
            max_request_size=MAX_RECORD_BYTES,
            # KAFKA_METADATA_MAX_AGE: how soon partitions added to the outcome topic are used.
            metadata_max_age_ms=metadata_max_age_ms,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def close(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> OutcomePublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(self, record: OutcomeRecord) -> None:
        """Publish one outcome; returns once the broker acknowledged it."""
        await self._producer.send_and_wait(
            self.outcomes_topic, value=record.to_json(), key=record.key
        )

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        """Copy an invalid event to the dead-letter topic, bytes unchanged."""
        await self._producer.send_and_wait(
            self.dead_letter_topic,
            value=value,
            key=key,
            headers=[("error", error.encode()), ("source", source.encode())],
        )
