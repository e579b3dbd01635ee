"""The consumer loop's bookkeeping, with in-memory fakes instead of Kafka and HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition
from structlog.testing import capture_logs

from consumer.metrics import Metrics
from consumer.outcomes import OutcomeRecord
from consumer.pipeline import Pipeline
from consumer.retry_policy import AttemptResult
from consumer.settings import Settings
from consumer.tracking_codes import TrackingCode
from consumer.webhook import WebhookRequest
from tests.factories import event_dict

TP = TopicPartition("exam-events", 0)


@dataclass(frozen=True)
class Record:
    offset: int
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    def assignment(self) -> set[TopicPartition]:
        return {TP}


class Store:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get(self, code: str) -> TrackingCode | None:
        if self.fail:
            raise RuntimeError("a bug in the lookup")
        return TrackingCode(code=code, endpoint_url="https://hooks.example.edu/x")


class Sender:
    def __init__(self) -> None:
        self.sent: list[WebhookRequest] = []

    async def send(self, request: WebhookRequest) -> AttemptResult:
        self.sent.append(request)
        await asyncio.sleep(0)
        return AttemptResult(status=200, latency_ms=1.0)


class Publisher:
    def __init__(self) -> None:
        self.outcomes: list[OutcomeRecord] = []

    async def publish(self, record: OutcomeRecord) -> None:
        self.outcomes.append(record)

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        raise AssertionError("no event here is invalid")


def make_pipeline(store: Store) -> tuple[Pipeline, Sender, Publisher]:
    sender, publisher = Sender(), Publisher()
    pipeline = Pipeline(
        Settings.from_env({}),
        FakeConsumer(),  # type: ignore[arg-type]
        store=store,
        sender=sender,
        publisher=publisher,
        metrics=Metrics(),
    )
    pipeline.offsets.assign([TP])
    return pipeline, sender, publisher


def record(offset: int, **overrides: Any) -> Record:
    doc = event_dict(**overrides)
    return Record(offset, str(doc["test_id"]).encode(), orjson.dumps(doc))


async def test_offsets_advance_past_events_that_need_no_webhook() -> None:
    """A non-trigger finishes at once, a trigger once its outcome is published."""
    pipeline, sender, publisher = make_pipeline(Store())
    pipeline._accept(TP, record(0, test_id="A", status="Review"))
    pipeline._accept(TP, record(1, test_id="B"))
    assert await pipeline.drain(None, within=5)
    assert pipeline.offsets.to_commit() == {TP: 2}
    assert [o.test_id for o in publisher.outcomes] == ["B"]
    assert len(sender.sent) == 1


async def test_a_crashing_task_is_logged_and_its_offset_is_never_committed() -> None:
    """A bug while handling an event is logged as event_task_crashed; the event stays
    unfinished, so the commit cannot move past it."""
    pipeline, _, publisher = make_pipeline(Store(fail=True))
    with capture_logs() as logs:
        pipeline._accept(TP, record(0, test_id="A", status="Ready", previous_status=None))
        pipeline._accept(TP, record(1, test_id="B"))
        assert not await pipeline.drain(None, within=0.2)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["event_task_crashed"]
    assert pipeline.offsets.to_commit() == {TP: 1}
    assert publisher.outcomes == []
