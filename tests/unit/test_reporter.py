"""The reporter publishes until the broker acknowledges, and gives up only on a record
that can never fit."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaTimeoutError, RecordTooLargeError
from structlog.testing import capture_logs

from consumer.metrics import Metrics
from consumer.outcomes import OutcomeRecord
from consumer.reporter import OutcomeReporter
from tests.factories import outcome_record

RECORD = outcome_record()


class FailingPublisher:
    """Fails the first ``failures`` publishes with ``error``, then acknowledges."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def publish(self, record: OutcomeRecord) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        await self.publish(RECORD)


def delivered_count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "itep_webhook_outcomes_total", {"outcome": "delivered", "reason": ""}
    )
    return value or 0.0


async def test_a_failed_publish_is_tried_again_until_acknowledged_and_counted_once() -> None:
    publisher = FailingPublisher(2, KafkaTimeoutError())
    metrics = Metrics()
    with capture_logs() as logs:
        await OutcomeReporter(publisher, metrics).publish(RECORD)
    assert publisher.calls == 3
    failures = [entry for entry in logs if entry["event"] == "publish_failed"]
    assert [(entry["error"], entry["retry_in"]) for entry in failures] == [
        ("KafkaTimeoutError", 0.1),
        ("KafkaTimeoutError", 0.2),
    ]
    assert delivered_count(metrics) == 1.0


async def test_a_record_too_large_is_raised_at_once_and_not_counted() -> None:
    publisher = FailingPublisher(5, RecordTooLargeError())
    metrics = Metrics()
    with pytest.raises(RecordTooLargeError):
        await OutcomeReporter(publisher, metrics).publish(RECORD)
    assert publisher.calls == 1
    assert delivered_count(metrics) == 0.0


async def test_a_dead_letter_is_tried_again_too() -> None:
    publisher = FailingPublisher(1, KafkaTimeoutError())
    await OutcomeReporter(publisher, Metrics()).dead_letter(b"T1", b"{", "bad", "t/0/1")
    assert publisher.calls == 2
