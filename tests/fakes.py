"""In-memory stand-ins for the schedule, the sender and the publisher, for unit tests of the
delivery logic. The real ones are tested against Postgres, HTTP and Kafka in integration/."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import datetime

from consumer.delivery.retry_policy import AttemptResult
from consumer.delivery.schedule import DEAD, PENDING, NewDelivery, Progress, ScheduledDelivery
from consumer.delivery.webhook import WebhookRequest
from consumer.outcomes import OutcomeRecord


@dataclass
class Row:
    id: int
    new: NewDelivery
    state: str
    attempts: int
    step: int
    due_at: datetime
    reason: str | None
    locked: bool = False
    history: list[str] = field(default_factory=list)


class MemorySchedule:
    """The schedule's rules without Postgres: one row per event_id, per test only the
    lowest pending id is due, dead rows kept."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self._ids = itertools.count(1)

    async def add(self, delivery: NewDelivery) -> None:
        if any(r.new.event_id == delivery.event_id for r in self.rows.values()):
            return
        row_id = next(self._ids)
        progress = delivery.progress
        self.rows[row_id] = Row(
            row_id,
            delivery,
            delivery.state,
            progress.attempts,
            progress.step,
            delivery.due_at,
            progress.reason,
        )

    async def reschedule(self, row_id: int, progress: Progress, due_at: datetime) -> None:
        row = self.rows[row_id]
        row.attempts, row.step, row.reason = progress.attempts, progress.step, progress.reason
        row.due_at = due_at
        row.locked = False

    async def kill(self, row_id: int, progress: Progress) -> bool:
        row = self.rows[row_id]
        row.state, row.attempts, row.reason = DEAD, progress.attempts, progress.reason
        row.locked = False
        return self._others(row)

    async def remove(self, row_id: int) -> bool:
        row = self.rows.pop(row_id)
        return self._others(row)

    async def release(self, row_ids: list[int]) -> None:
        for row_id in row_ids:
            self.rows[row_id].locked = False

    async def waiting_tests(self, topic: str, partitions: list[int]) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {p: set() for p in partitions}
        for row in self.pending():
            if row.new.source_topic == topic and row.new.source_partition in out:
                out[row.new.source_partition].add(row.new.test_id)
        return out

    async def handed_over(self, topic: str, committed: dict[int, int]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {p: set() for p in committed}
        for row in self.rows.values():
            new = row.new
            if new.source_topic == topic and new.source_offset >= committed.get(
                new.source_partition, 1 << 62
            ):
                out[new.source_partition].add(new.source_offset)
        return out

    def pending(self) -> list[Row]:
        return sorted((r for r in self.rows.values() if r.state == PENDING), key=lambda r: r.id)

    def dead(self) -> list[Row]:
        return [r for r in self.rows.values() if r.state == DEAD]

    def claim(self, now: datetime) -> list[ScheduledDelivery]:
        """The due heads of each test's pending rows, locked."""
        heads: dict[str, Row] = {}
        for row in self.pending():
            heads.setdefault(row.new.test_id, row)
        due = [r for r in heads.values() if r.due_at <= now and not r.locked]
        for row in due:
            row.locked = True
        return [
            ScheduledDelivery(
                id=r.id,
                event_id=r.new.event_id,
                test_id=r.new.test_id,
                tracking_code=r.new.tracking_code,
                trigger=r.new.trigger,
                event=r.new.event,
                source_topic=r.new.source_topic,
                source_partition=r.new.source_partition,
                source_offset=r.new.source_offset,
                attempts=r.attempts,
                step=r.step,
                due_at=r.due_at,
            )
            for r in sorted(due, key=lambda r: (r.due_at, r.id))
        ]

    def next_due(self) -> datetime | None:
        """The earliest due time among the heads of each test's pending rows."""
        heads: dict[str, Row] = {}
        for row in self.pending():
            heads.setdefault(row.new.test_id, row)
        return min((r.due_at for r in heads.values()), default=None)

    def _others(self, row: Row) -> bool:
        return any(r.new.test_id == row.new.test_id and r.id != row.id for r in self.pending())


class FakeSender:
    """Answers ``status`` (or the next of ``statuses``) and records what it was sent."""

    def __init__(self, status: int = 200, statuses: list[int] | None = None) -> None:
        self.sent: list[WebhookRequest] = []
        self.status = status
        self.statuses = list(statuses or [])

    async def send(self, request: WebhookRequest) -> AttemptResult:
        self.sent.append(request)
        await asyncio.sleep(0)
        status = self.statuses.pop(0) if self.statuses else self.status
        return AttemptResult(status=status, latency_ms=1.0)


class FakePublisher:
    def __init__(self) -> None:
        self.outcomes: list[OutcomeRecord] = []
        self.dead_letters: list[tuple[bytes | None, bytes | None, str, str]] = []

    async def publish(self, record: OutcomeRecord) -> None:
        self.outcomes.append(record)

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        self.dead_letters.append((key, value, error, source))
