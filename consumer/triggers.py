"""Whether an event triggers a webhook (CONTRACT section 1). Pure: no I/O.

``candidate_trigger`` looks at the event alone and answers "could this be a webhook?";
``decide`` then takes the tracking code (or its absence) and gives the final ``Decision``.
"""

from __future__ import annotations

from enum import StrEnum

from consumer.events import EventType, ExamEvent, Status
from consumer.records import record
from consumer.tracking_codes import TrackingCode


class Trigger(StrEnum):
    FINISHED = "finished"
    COMPLETED = "completed"
    RESET = "reset"
    INVALIDATED = "invalidated"
    TECHNICAL_ISSUE = "technical_issue"


_BY_STATUS = {
    Status.FINISHED: Trigger.FINISHED,
    Status.COMPLETE: Trigger.COMPLETED,
    Status.INVALIDATED: Trigger.INVALIDATED,
    Status.PROBLEM: Trigger.TECHNICAL_ISSUE,
}


@record
class Deliver:
    trigger: Trigger
    tracking_code: TrackingCode


@record
class Skip:
    """A trigger with no usable tracking code: nothing is sent, outcome ``skipped``."""

    trigger: Trigger
    reason: str


@record
class Ignore:
    """Not a webhook at all: no outcome, only counted."""

    why: str


Decision = Deliver | Skip | Ignore


def candidate_trigger(event: ExamEvent) -> Trigger | None:
    """The trigger this event would fire, before its tracking code is known."""
    if event.event_type is EventType.RESET:
        return Trigger.RESET
    if not event.status_changed:
        return None
    return _BY_STATUS.get(event.status)


def decide(event: ExamEvent, code: TrackingCode | None) -> Decision:
    """The final decision for ``event`` given its looked-up tracking code.

    ``code`` is None when the event names no tracking code (null or empty) or the code is
    unknown. An event that names no tracking code is never delivered, whatever ``code`` is.
    """
    if not event.tracking_code:
        code = None
    trigger = candidate_trigger(event)
    if trigger is None:
        reason = "status_unchanged" if not event.status_changed else "not_a_trigger"
        return Ignore(reason)
    usable = code is not None and code.active
    if trigger is Trigger.FINISHED:
        if usable and code is not None and code.call_on_finished:
            return Deliver(trigger, code)
        return Ignore("finished_not_requested")
    if not event.tracking_code:
        return Skip(trigger, "no_tracking_code")
    if code is None:
        return Skip(trigger, "unknown_tracking_code")
    if not code.active:
        return Skip(trigger, "inactive_tracking_code")
    return Deliver(trigger, code)
