"""Realistic exam traffic for benchmarks and the demo.

``generate_events`` is pure: from a seed it yields events for a fixed set of tests, each test
walking a plausible lifecycle in order (``Ready -> Incomplete -> Finished -> Review ->
Complete`` with results; some hit ``Problem``, some are ``Invalidated``, some are reset and
retaken). Tests are interleaved at random; within one test, each event's ``previous_status`` is
the status of the test's event before it. Once every test has run its course, each is reset
and retaken, so any count can be reached with the same test ids.

The seed fixes test ids, event ids, lifecycles and results. ``occurred_at`` comes from the
clock when the event is generated, which is just before it is published, so the outcomes'
``recorded_at - event_occurred_at`` measures the pipeline's latency.

``run_loadgen`` publishes a stream of events in batches, optionally at a fixed rate, and
reports progress about once a second.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import string
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from consumer.events import SECTION_NAMES, EventType, Results, SectionResult, Status
from producers.builder import ExamEventMessage
from producers.publisher import Delivery, EventPublisher

__all__ = ["LoadReport", "Step", "generate_events", "run_loadgen"]

Clock = Callable[[], datetime]
Progress = Callable[[int, int, float], None]

_CEFR_BY_LEVEL: Final = ("A1", "A1", "A2", "B1", "B2", "C1", "C2")
_CORE_SECTIONS: Final = ("grammar", "listening", "reading")


@dataclass(frozen=True, slots=True)
class Step:
    """One event of a lifecycle: the status it reports, and the reset type for a reset."""

    status: Status
    reset_type: str | None = None


_READY: Final = Step(Status.READY)
_INCOMPLETE: Final = Step(Status.INCOMPLETE)
_FINISHED: Final = Step(Status.FINISHED)
_REVIEW: Final = Step(Status.REVIEW)
_COMPLETE: Final = Step(Status.COMPLETE)
_TAKE: Final = (_INCOMPLETE, _FINISHED, _REVIEW, _COMPLETE)

# (cumulative probability, lifecycle); the last one is the ordinary path.
_LIFECYCLES: Final[tuple[tuple[float, tuple[Step, ...]], ...]] = (
    # technical trouble mid-exam, a reset, then a clean retake
    (0.06, (_READY, _INCOMPLETE, Step(Status.PROBLEM), Step(Status.READY, "technical"), *_TAKE)),
    # caught at review and invalidated
    (0.10, (_READY, *_TAKE[:3], Step(Status.INVALIDATED))),
    # the whole test reset during the exam
    (0.16, (_READY, _INCOMPLETE, Step(Status.READY, "full"), *_TAKE)),
    # one section reset at review, retaken
    (0.20, (_READY, *_TAKE[:3], Step(Status.INCOMPLETE, "speaking"), *_TAKE[1:])),
    # never sat, disabled by the partner
    (0.22, (_READY, Step(Status.DISABLED))),
    (1.00, (_READY, *_TAKE)),
)
_RETAKE: Final = (Step(Status.READY, "retake"), *_TAKE)


@dataclass(slots=True)
class _TestRun:
    """The mutable state of one test while its events are generated."""

    test_id: str
    oid: str
    tracking_code: str | None
    steps: list[Step]
    status: Status | None = None
    duration_minutes: int = 0
    finished_on: date | None = None
    done: int = 0

    @property
    def active(self) -> bool:
        return self.done < len(self.steps)


def generate_events(
    count: int,
    *,
    tests: int,
    tracking_codes: Sequence[str | None] = ("LOADGEN",),
    seed: int | None = None,
    clock: Clock | None = None,
) -> Iterator[ExamEventMessage]:
    """Yield ``count`` valid events over ``tests`` test ids (fewer if ``count`` is smaller).

    Each test gets one of ``tracking_codes`` for life; ``None`` stands for a test without one.
    """
    if count < 0 or tests < 1:
        raise ValueError("count must be >= 0 and tests >= 1")
    if not tracking_codes:
        raise ValueError("tracking_codes must not be empty")
    rng = random.Random(seed)  # noqa: S311 -- load data, reproducible by seed; not a secret
    now = clock or (lambda: datetime.now(UTC))
    runs = _new_runs(rng, min(tests, max(count, 1)), tracking_codes)
    active: list[_TestRun] = []
    for _ in range(count):
        if not active:
            for run in runs:
                if not run.active:
                    run.steps.extend(_RETAKE)
            active = list(runs)
        index = rng.randrange(len(active))
        run = active[index]
        yield _next_event(rng, run, now())
        if not run.active:
            # Swap-remove keeps the pick O(1); the order stays a function of the seed.
            active[index] = active[-1]
            active.pop()


def _new_runs(
    rng: random.Random, tests: int, tracking_codes: Sequence[str | None]
) -> list[_TestRun]:
    ids: set[str] = set()
    runs: list[_TestRun] = []
    while len(runs) < tests:
        test_id = f"{rng.randrange(10**8):08d}" + "".join(rng.choices(string.ascii_uppercase, k=2))
        if test_id in ids:
            continue
        ids.add(test_id)
        runs.append(
            _TestRun(
                test_id=test_id,
                oid=f"crm-{rng.randrange(10**6):06d}",
                tracking_code=rng.choice(tracking_codes),
                steps=list(_lifecycle(rng)),
            )
        )
    return runs


def _lifecycle(rng: random.Random) -> tuple[Step, ...]:
    draw = rng.random()
    for threshold, steps in _LIFECYCLES:
        if draw < threshold:
            return steps
    return _LIFECYCLES[-1][1]


def _next_event(rng: random.Random, run: _TestRun, moment: datetime) -> ExamEventMessage:
    step = run.steps[run.done]
    run.done += 1
    previous = run.status
    if step.reset_type is not None and step.status is Status.READY:
        run.duration_minutes = 0
        run.finished_on = None
    elif step.status is Status.INCOMPLETE:
        run.duration_minutes = max(run.duration_minutes, rng.randint(5, 60))
    elif step.status is Status.FINISHED:
        run.duration_minutes = max(run.duration_minutes, rng.randint(45, 130))
        run.finished_on = moment.astimezone(UTC).date()
    run.status = step.status
    return ExamEventMessage(
        test_id=run.test_id,
        status=step.status,
        previous_status=previous,
        event_type=EventType.RESET if step.reset_type else EventType.STATUS_CHANGED,
        reset_type=step.reset_type,
        tracking_code=run.tracking_code,
        oid=run.oid,
        duration_minutes=run.duration_minutes,
        finished_on=run.finished_on,
        results=_results(rng, run.test_id) if step.status is Status.COMPLETE else None,
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        occurred_at=moment,
    )


def _cefr(level: float) -> str:
    return _CEFR_BY_LEVEL[min(int(level), len(_CEFR_BY_LEVEL) - 1)]


def _results(rng: random.Random, test_id: str) -> Results:
    names = SECTION_NAMES if rng.random() < 0.8 else _CORE_SECTIONS
    sections: dict[str, SectionResult] = {}
    for name in names:
        level = round(rng.uniform(0.5, 6.0), 1)
        percent = round(level / 6.0 * 100)
        sections[name] = SectionResult(
            level=level,
            score=round(percent * rng.uniform(0.6, 1.0)),
            percent=percent,
            cefr=_cefr(level),
            question_count=2 if name == "writing" else None,
        )
    overall = round(sum(s.level for s in sections.values()) / len(sections), 1)
    # A base64 signature carries '+' and '/', which the webhook body must keep intact.
    signature = base64.b64encode(rng.randbytes(12)).decode()
    return Results(
        score_report_url=f"https://results.example.org/r/{test_id}?sig={signature}&x=1",
        overall_level=overall,
        overall_cefr=_cefr(overall),
        sections=sections,
    )


@dataclass(frozen=True, slots=True)
class LoadReport:
    published: int
    elapsed_seconds: float

    @property
    def rate(self) -> float:
        """Events acknowledged per second over the whole run."""
        return self.published / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


async def run_loadgen(
    publisher: EventPublisher,
    events: Iterable[ExamEventMessage],
    total: int,
    *,
    rate: float | None = None,
    batch_size: int = 500,
    window: int = 4,
    progress: Progress | None = None,
    progress_interval: float = 1.0,
) -> LoadReport:
    """Publish ``events`` (``total`` of them) in batches; at most ``rate`` a second if given.

    Up to ``window`` batches are in flight at once; batches are handed to the producer one
    after another, so each test's events keep their order. ``progress(published, total,
    elapsed_seconds)`` is called about every ``progress_interval`` seconds, ``published``
    counting acknowledged events.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be greater than zero")
    if rate is not None:
        # About a twentieth of a second's worth per batch keeps the pace smooth.
        batch_size = max(1, min(batch_size, int(rate / 20)))
    started = time.monotonic()
    sent = 0
    published = 0
    in_flight: deque[tuple[int, asyncio.Task[list[Delivery]]]] = deque()

    async def progress_routine() -> None:
        assert progress is not None
        while True:
            await asyncio.sleep(progress_interval)
            progress(published, total, time.monotonic() - started)

    async def settle(keep: int) -> None:
        nonlocal published
        while len(in_flight) > keep:
            size, acks = in_flight.popleft()
            await acks
            published += size

    reporter = asyncio.create_task(progress_routine()) if progress is not None else None
    try:
        source = iter(events)
        while True:
            if rate is not None:
                # Pacing, not synchronisation: wait until this batch is due.
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            batch = list(itertools.islice(source, batch_size))
            if not batch:
                break
            in_flight.append((len(batch), await publisher.enqueue_many(batch)))
            sent += len(batch)
            await settle(window - 1)
        await settle(0)
    finally:
        leftovers: list[asyncio.Task[Any]] = [acks for _, acks in in_flight]
        if reporter is not None:
            leftovers.append(reporter)
        for task in leftovers:
            task.cancel()
        # Gathered so that a failed batch's exception is retrieved, not reported as lost.
        await asyncio.gather(*leftovers, return_exceptions=True)
    return LoadReport(published=published, elapsed_seconds=time.monotonic() - started)
