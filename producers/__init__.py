"""The upstream side of itep-webhooks: build, validate and publish exam events.

    from producers import EventPublisher, ExamEventMessage

    async with EventPublisher("127.0.0.1:9092", "exam-events") as publisher:
        await publisher.publish(ExamEventMessage(test_id="50613490BP", status="Ready"))

Events are validated with the consumer's own parser (``consumer.events.parse_event``) before
they are sent; an invalid one raises ``consumer.errors.InvalidEvent``. This package depends on
``consumer.events`` and its error and settings modules only.
"""

from __future__ import annotations

from consumer.errors import InvalidEvent
from consumer.events import EventType, Results, SectionResult, Status
from producers.builder import EncodedEvent, ExamEventMessage, encode_document, parse_json_lines
from producers.publisher import Delivery, EventPublisher, PublisherSettings

__all__ = [
    "Delivery",
    "EncodedEvent",
    "EventPublisher",
    "EventType",
    "ExamEventMessage",
    "InvalidEvent",
    "PublisherSettings",
    "Results",
    "SectionResult",
    "Status",
    "encode_document",
    "parse_json_lines",
]
