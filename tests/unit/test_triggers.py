"""``candidate_trigger`` and ``decide``: the trigger table of CONTRACT section 1."""

from __future__ import annotations

from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.events import EventType, ExamEvent, Status, parse_event
from consumer.tracking_codes import TrackingCode
from consumer.triggers import Deliver, Ignore, Skip, Trigger, candidate_trigger, decide
from tests.strategies import contract_example, encode_event, event_dicts

ACTIVE: Final = TrackingCode(code="ACME-UNI", endpoint_url="https://hooks.example.edu/itep")
ON_FINISHED: Final = TrackingCode(
    code="ACME-UNI", endpoint_url="https://hooks.example.edu/itep", call_on_finished=True
)
INACTIVE: Final = TrackingCode(
    code="ACME-UNI",
    endpoint_url="https://hooks.example.edu/itep",
    call_on_finished=True,
    active=False,
)
NO_PREVIOUS: Final = object()


def event(
    status: str,
    previous: str | object | None = NO_PREVIOUS,
    *,
    reset: bool = False,
    tracking_code: str | None = "ACME-UNI",
) -> ExamEvent:
    """A valid event with the given status fields (``previous`` left out when not given)."""
    doc: dict[str, Any] = {**contract_example(), "status": status, "tracking_code": tracking_code}
    del doc["previous_status"]
    if previous is not NO_PREVIOUS:
        doc["previous_status"] = previous
    if reset:
        doc["event_type"] = "reset"
        doc["reset_type"] = "full"
    return parse_event(encode_event(doc))


# --------------------------------------------------------------------------------------------
# The table


@pytest.mark.parametrize(
    ("status", "previous", "trigger"),
    [
        ("Complete", "Review", Trigger.COMPLETED),
        ("Complete", None, Trigger.COMPLETED),
        ("Complete", NO_PREVIOUS, Trigger.COMPLETED),
        ("Completed", "Review", Trigger.COMPLETED),
        ("Complete", "Finished", Trigger.COMPLETED),
        ("Invalidated", "Complete", Trigger.INVALIDATED),
        ("Invalidated", None, Trigger.INVALIDATED),
        ("Problem", "Incomplete", Trigger.TECHNICAL_ISSUE),
        ("Technical Difficulty", "Started", Trigger.TECHNICAL_ISSUE),
        ("Problem", NO_PREVIOUS, Trigger.TECHNICAL_ISSUE),
    ],
)
def test_status_that_becomes_a_trigger_state_delivers(
    status: str, previous: str | None, trigger: Trigger
) -> None:
    """Becoming Complete, Invalidated or Problem (legacy names too) delivers to an active code."""
    assert decide(event(status, previous), ACTIVE) == Deliver(trigger, ACTIVE)


@pytest.mark.parametrize("previous", ["Incomplete", "Started", None, NO_PREVIOUS])
def test_finished_delivers_when_code_asks_for_it(previous: str | None) -> None:
    """Becoming Finished delivers when the tracking code has ``call_on_finished``."""
    assert decide(event("Finished", previous), ON_FINISHED) == Deliver(
        Trigger.FINISHED, ON_FINISHED
    )


def test_finished_is_ignored_without_call_on_finished() -> None:
    """Becoming Finished sends nothing when the code does not ask for it."""
    assert isinstance(decide(event("Finished", "Incomplete"), ACTIVE), Ignore)


@pytest.mark.parametrize(
    ("tracking_code", "code"),
    [(None, None), ("", None), ("NOPE", None), ("ACME-UNI", INACTIVE)],
    ids=["null", "empty", "unknown", "inactive"],
)
def test_finished_without_usable_code_is_ignored_not_skipped(
    tracking_code: str | None, code: TrackingCode | None
) -> None:
    """A Finished event without a usable tracking code is no trigger at all: no outcome."""
    decision = decide(event("Finished", "Incomplete", tracking_code=tracking_code), code)
    assert isinstance(decision, Ignore)


@pytest.mark.parametrize(
    ("status", "previous"),
    [
        ("Ready", None),
        ("Complete", "Complete"),
        ("Finished", "Finished"),
        ("Invalidated", "Invalidated"),
        ("Incomplete", "Ready"),
        ("Problem", "Incomplete"),
        ("Disabled", "Complete"),
    ],
)
def test_reset_delivers_whatever_the_status(status: str, previous: str | None) -> None:
    """A ``reset`` event is a trigger with any status, repeated or not."""
    assert decide(event(status, previous, reset=True), ACTIVE) == Deliver(Trigger.RESET, ACTIVE)


@pytest.mark.parametrize(
    ("status", "previous"),
    [
        ("Complete", "Complete"),
        ("Completed", "Complete"),
        ("Complete", "Completed"),
        ("Invalidated", "Invalidated"),
        ("Problem", "Problem"),
        ("Technical Difficulty", "Problem"),
        ("Problem", "Technical Difficulty"),
    ],
)
def test_repeated_status_is_ignored(status: str, previous: str) -> None:
    """A status equal to ``previous_status`` (after normalisation) did not "become" anything."""
    decision = decide(event(status, previous), ACTIVE)
    assert isinstance(decision, Ignore)
    assert candidate_trigger(event(status, previous)) is None


def test_repeated_finished_is_ignored_even_when_asked_for() -> None:
    """Finished after Finished sends nothing, even with ``call_on_finished``."""
    assert isinstance(decide(event("Finished", "Finished"), ON_FINISHED), Ignore)


@pytest.mark.parametrize("status", ["Ready", "Incomplete", "Started", "Review", "Disabled"])
@pytest.mark.parametrize("previous", ["Complete", None, NO_PREVIOUS])
def test_non_trigger_status_is_ignored(status: str, previous: str | None) -> None:
    """Ready, Incomplete, Review and Disabled send nothing, even as a change."""
    decision = decide(event(status, previous), ON_FINISHED)
    assert isinstance(decision, Ignore)
    assert candidate_trigger(event(status, previous)) is None


# --------------------------------------------------------------------------------------------
# Skips

SKIPPING: Final = [
    ("Complete", False, Trigger.COMPLETED),
    ("Invalidated", False, Trigger.INVALIDATED),
    ("Problem", False, Trigger.TECHNICAL_ISSUE),
    ("Ready", True, Trigger.RESET),
    ("Finished", True, Trigger.RESET),
]


@pytest.mark.parametrize(("status", "reset", "trigger"), SKIPPING)
@pytest.mark.parametrize("tracking_code", [None, ""])
def test_trigger_without_tracking_code_is_skipped(
    status: str, reset: bool, trigger: Trigger, tracking_code: str | None
) -> None:
    """A trigger whose test has no tracking code (null or empty) is skipped."""
    decision = decide(event(status, "Review", reset=reset, tracking_code=tracking_code), None)
    assert decision == Skip(trigger, "no_tracking_code")


@pytest.mark.parametrize(("status", "reset", "trigger"), SKIPPING)
def test_trigger_with_unknown_tracking_code_is_skipped(
    status: str, reset: bool, trigger: Trigger
) -> None:
    """A trigger whose tracking code is not in the table is skipped."""
    decision = decide(event(status, "Review", reset=reset, tracking_code="NOPE"), None)
    assert decision == Skip(trigger, "unknown_tracking_code")


@pytest.mark.parametrize(("status", "reset", "trigger"), SKIPPING)
def test_trigger_with_inactive_tracking_code_is_skipped(
    status: str, reset: bool, trigger: Trigger
) -> None:
    """A trigger whose tracking code is disabled is skipped."""
    decision = decide(event(status, "Review", reset=reset), INACTIVE)
    assert decision == Skip(trigger, "inactive_tracking_code")


def test_event_naming_no_code_is_not_delivered_to_a_passed_code() -> None:
    """An event without a tracking code is skipped even if a caller passes a code anyway."""
    assert decide(event("Complete", tracking_code=None), ACTIVE) == Skip(
        Trigger.COMPLETED, "no_tracking_code"
    )
    assert isinstance(decide(event("Finished", tracking_code=""), ON_FINISHED), Ignore)


# --------------------------------------------------------------------------------------------
# Properties

CODES: Final = st.sampled_from([None, ACTIVE, ON_FINISHED, INACTIVE])


def _parse(doc: dict[str, Any]) -> ExamEvent:
    return parse_event(encode_event(doc))


@given(doc=event_dicts(), code=CODES)
def test_decision_follows_the_table(doc: dict[str, Any], code: TrackingCode | None) -> None:
    """For any event and code, the decision is the one section 1 describes."""
    exam = _parse(doc)
    decision = decide(exam, code)
    changed = exam.previous_status is None or exam.previous_status != exam.status
    by_status = {
        Status.FINISHED: Trigger.FINISHED,
        Status.COMPLETE: Trigger.COMPLETED,
        Status.INVALIDATED: Trigger.INVALIDATED,
        Status.PROBLEM: Trigger.TECHNICAL_ISSUE,
    }
    if exam.event_type is EventType.RESET:
        expected: Trigger | None = Trigger.RESET
    else:
        expected = by_status.get(exam.status) if changed else None
    assert candidate_trigger(exam) == expected
    usable = code is not None and code.active and bool(exam.tracking_code)
    if expected is None or (
        expected is Trigger.FINISHED and not (usable and code is not None and code.call_on_finished)
    ):
        assert isinstance(decision, Ignore)
    elif usable:
        assert decision == Deliver(expected, code)
    else:
        assert isinstance(decision, Skip)
        assert decision.trigger is expected
        if not exam.tracking_code:
            # Whatever code a caller passes, an event that names none is skipped as such.
            assert decision.reason == "no_tracking_code"
        elif code is None:
            assert decision.reason == "unknown_tracking_code"
        else:
            assert decision.reason == "inactive_tracking_code"


@given(doc=event_dicts(event_type="reset"), code=CODES)
def test_reset_is_never_ignored(doc: dict[str, Any], code: TrackingCode | None) -> None:
    """Every reset event ends in a delivery or a skip, never in silence."""
    assert isinstance(decide(_parse(doc), code), Deliver | Skip)


@given(
    doc=event_dicts(status="Finished", event_type="status_changed"),
    code=CODES,
)
def test_finished_is_never_skipped(doc: dict[str, Any], code: TrackingCode | None) -> None:
    """A Finished status change is delivered or ignored; it never publishes ``skipped``."""
    assert isinstance(decide(_parse(doc), code), Deliver | Ignore)
