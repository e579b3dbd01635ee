"""The outcome record of topic ``webhook-outcomes`` (CONTRACT section 5). Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRecord:
    """One record of ``webhook-outcomes``; fields in the contract's order."""

    schema_version: int = SCHEMA_VERSION
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

    def to_json(self) -> bytes:
        # orjson writes a dataclass's fields in order, natively: no asdict() deep copy.
        return orjson.dumps(self)

    @property
    def key(self) -> bytes | None:
        return self.test_id.encode() if self.test_id else None
