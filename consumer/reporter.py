"""Outcome and dead-letter records, published until the broker acknowledges them.

A timeout or an unreachable broker is what an outage looks like: the record is tried again
with backoff (up to ``PUBLISH_BACKOFF_MAX``) for as long as it takes, and the caller waits;
a record too large for the broker can never succeed and is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import structlog
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from consumer.metrics import Metrics
from consumer.outcomes import OutcomeRecord

log = structlog.get_logger(__name__)

PUBLISH_BACKOFF_MAX: Final = 5.0
TOO_LARGE: Final = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class Publisher(Protocol):
    async def publish(self, record: OutcomeRecord) -> None: ...

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None: ...


class OutcomeReporter:
    def __init__(self, publisher: Publisher, metrics: Metrics) -> None:
        self.publisher = publisher
        self.metrics = metrics

    async def publish(self, record: OutcomeRecord) -> None:
        # Tried once before the retry loop: no closure per outcome while the broker answers.
        try:
            await self.publisher.publish(record)
        except KafkaError as exc:
            await _until_acknowledged(lambda: self.publisher.publish(record), exc)
        self.metrics.outcome(record.outcome.value, record.reason or "").inc()

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        await _until_acknowledged(lambda: self.publisher.dead_letter(key, value, error, source))


async def _until_acknowledged(
    send: Callable[[], Awaitable[None]], failed: KafkaError | None = None
) -> None:
    """Send until the broker acknowledges, with backoff after each failure (``failed``: the
    error of a try the caller already made). A record too large is raised at once."""
    delay = 0.1
    while True:
        if failed is not None:
            if isinstance(failed, TOO_LARGE):
                raise failed
            log.warning(
                "publish_failed", error=type(failed).__name__, retry_in=delay, waiting_for="Kafka"
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, PUBLISH_BACKOFF_MAX)
        try:
            await send()
        except KafkaError as exc:
            failed = exc
        else:
            return
