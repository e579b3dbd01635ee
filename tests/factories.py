"""Test data from the contract's examples, with overrides: event dicts and outcome records."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import orjson

from consumer.outcomes import Outcome, OutcomeRecord

EXAMPLE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f",
    "event_type": "status_changed",
    "occurred_at": "2026-11-25T16:02:11Z",
    "test_id": "50613490BP",
    "oid": "crm-000042",
    "tracking_code": "ACME-UNI",
    "status": "Complete",
    "previous_status": "Review",
    "reset_type": None,
    "duration_minutes": 87,
    "finished_on": "2026-11-24",
    "results": {
        "score_report_url": "https://results.example.org/r/50613490BP?sig=a+b&x=1",
        "overall": {"level": 4.3, "cefr": "B2"},
        "sections": {
            "grammar": {"level": 4.0, "score": 41, "percent": 67, "cefr": "B1"},
            "listening": {"level": 3.5, "score": 62, "percent": 62, "cefr": "B1"},
            "reading": {"level": 4.0, "score": 70, "percent": 70, "cefr": "B2"},
            "writing": {
                "level": 3.0,
                "score": 62,
                "percent": 62,
                "cefr": "B1",
                "question_count": 2,
            },
            "speaking": {"level": 3.0, "score": 62, "percent": 62, "cefr": "C1+"},
        },
    },
}


def event_dict(**overrides: Any) -> dict[str, Any]:
    """The contract's example event with a fresh event_id and ``overrides`` applied."""
    doc = copy.deepcopy(EXAMPLE)
    doc["event_id"] = str(uuid.uuid4())
    doc.update(overrides)
    return doc


def event_bytes(**overrides: Any) -> bytes:
    return orjson.dumps(event_dict(**overrides))


# The outcome example of CONTRACT section 5 (its event_id written out in full).
CONTRACT_OUTCOME: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f",
    "test_id": "50613490BP",
    "oid": "crm-000042",
    "tracking_code": "ACME-UNI",
    "trigger": "completed",
    "exam_status": "Complete",
    "outcome": "delivered",
    "reason": None,
    "attempt": 1,
    "http_status": 200,
    "latency_ms": 12.4,
    "endpoint_host": "hooks.example.edu",
    "event_occurred_at": "2026-11-25T16:02:11Z",
    "recorded_at": "2026-11-25T16:02:11.087Z",
    "next_attempt_at": None,
}


def outcome_record(**changes: Any) -> OutcomeRecord:
    """The contract's example outcome as an ``OutcomeRecord``, with ``changes`` applied."""
    values: dict[str, Any] = {**CONTRACT_OUTCOME, "outcome": Outcome.DELIVERED}
    values.update(changes)
    return OutcomeRecord(**values)
