"""The outcome record of topic ``webhook-outcomes`` (CONTRACT section 5). Pure: no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum

import orjson

SCHEMA_VERSION = 1


class Outcome(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    RETRY_SCHEDULED = "retry_scheduled"

    @property
    def final(self) -> bool:
        return self is not Outcome.RETRY_SCHEDULED


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-11-25T16:02:11.087Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    event_id: str | None
    test_id: str | None
    oid: str | None
    tracking_code: str | None
    trigger: str | None
    exam_status: str | None
    outcome: Outcome
    reason: str | None
    attempt: int
    http_status: int | None
    latency_ms: float | None
    endpoint_host: str | None
    event_occurred_at: str | None
    recorded_at: str
    next_attempt_at: str | None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["outcome"] = self.outcome.value
        return orjson.dumps({"schema_version": doc.pop("schema_version"), **doc})

    @property
    def key(self) -> bytes | None:
        return self.test_id.encode() if self.test_id else None
