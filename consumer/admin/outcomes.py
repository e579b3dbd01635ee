"""``itep-webhooks outcomes tail|summary``: read the outcome topic, for analysts and on-call.

``register(subparsers)`` adds the ``outcomes`` parser; its subcommand lands in
``args.outcomes_command`` and ``await run(args, settings)`` carries it out against
``KAFKA_BOOTSTRAP_SERVERS`` and ``OUTCOMES_TOPIC``, returning the exit status: 0 done (also when
nothing matches), 1 Kafka unreachable within ``CONNECT_TIMEOUT``, the topic missing or Kafka
silent for ``STALL_TIMEOUT`` mid-window, 2 invalid input (one line on stderr naming the flag,
checked before Kafka is reached).

Both read with a consumer of no group: every partition assigned by hand, nothing committed, so
they never disturb the service's offsets and may run anywhere, as often as wanted.

``tail`` prints the records that arrive from now on (or from ``--from-beginning``, or from
``--since``), one readable line each or ``--json``; ``--limit`` and ``--timeout`` end it.
``summary`` reads the window ``--since``..``--until`` (Kafka record timestamps: each partition
from the first offset at or after ``--since``, found with ``offsets_for_times``, up to the first
at or after ``--until``, or the end offsets taken at start) and prints the table of
``outcome_summary``. While a window takes more than ``PROGRESS_INTERVAL`` to read, progress goes
to stderr once a second, always: a bar on a terminal, a plain line otherwise (a log keeps it).

A TIME is RFC 3339 (``2026-12-02T07:00:00Z``) or a duration meaning that long ago (``90m``,
``2h``, ``1d``), counted back from this machine's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer.admin.deliveries import format_time, resolve_time
from consumer.admin.outcome_summary import (
    GROUPINGS,
    OutcomeFilter,
    OutcomeSummary,
    decode_record,
    format_line,
    format_progress,
    format_table,
    format_window,
)
from consumer.errors import ItepWebhooksError
from consumer.outcomes import Outcome
from consumer.settings import Settings, parse_duration

CONNECT_TIMEOUT: Final = 15.0
REQUEST_TIMEOUT_MS: Final = 10_000
STALL_TIMEOUT: Final = 30.0
PROGRESS_INTERVAL: Final = 1.0
_POLL_SECONDS: Final = 0.5
_TIME_HELP: Final = (
    "TIME is RFC 3339 (2026-12-02T07:00:00Z) or a duration meaning that long ago (90m, 2h, 1d), "
    "compared with the records' Kafka timestamps."
)
_TAIL_EPILOG: Final = (
    "Different selectors must all match; a repeated one matches any of its values. " + _TIME_HELP
)


class InvalidOption(ItepWebhooksError):
    """An ``outcomes`` flag that makes no sense: ``flag`` names it, ``rule`` says why."""

    def __init__(self, flag: str, rule: str) -> None:
        super().__init__(f"{flag}: {rule}")
        self.flag = flag
        self.rule = rule


class TopicUnreadable(ItepWebhooksError):
    """Kafka cannot be reached, has no such topic, or stopped answering mid-read."""

    retriable = True


# ------------------------------------------------------------------------------------ parsing


def _add_selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-code", action="append", metavar="CODE", help="of this code (repeatable)"
    )
    parser.add_argument(
        "--test-id", action="append", metavar="ID", help="of this test (repeatable)"
    )
    parser.add_argument(
        "--outcome",
        action="append",
        choices=[outcome.value for outcome in Outcome],
        metavar="OUTCOME",
        help="with this outcome (repeatable): " + ", ".join(outcome.value for outcome in Outcome),
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``outcomes`` and its subcommands; the subcommand is ``args.outcomes_command``."""
    parser = subparsers.add_parser(
        "outcomes", help="follow or summarise the outcome topic (OUTCOMES_TOPIC)"
    )
    commands = parser.add_subparsers(dest="outcomes_command", required=True, metavar="COMMAND")

    tail = commands.add_parser(
        "tail",
        help="print outcome records as they arrive, one line each",
        description="Print outcome records as they arrive, one readable line each (time, "
        "outcome, reason, tracking code, test id, event id, attempt, HTTP status, latency), "
        "or as JSON. Starts with new records unless told otherwise; Ctrl-C stops.",
        epilog=_TAIL_EPILOG,
    )
    _add_selectors(tail)
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record kept"
    )
    start.add_argument("--since", metavar="TIME", help="start at records published since TIME")
    tail.add_argument(
        "--json", action="store_true", help="print each record as on the topic, one a line"
    )
    tail.add_argument("--limit", type=int, metavar="N", help="stop after printing N records")
    tail.add_argument(
        "--timeout",
        metavar="DURATION",
        help="stop once no record has arrived on the topic for DURATION (e.g. 5s)",
    )

    summary = commands.add_parser(
        "summary",
        help="count the outcomes of a time window, per tracking code, trigger or reason",
        description="Read the outcome records published in a time window and print, per "
        "group and in total: delivered, failed, skipped, rejected, retries (retry_scheduled "
        "records), success (delivered / final outcomes, rounded down) and the p50 and p99 "
        "latency of HTTP attempts in milliseconds.",
        epilog=_TIME_HELP,
    )
    summary.add_argument(
        "--since", default="1h", metavar="TIME", help="start of the window (default 1h)"
    )
    summary.add_argument("--until", metavar="TIME", help="end of the window (default now)")
    summary.add_argument(
        "--by", choices=tuple(GROUPINGS), default="tracking-code", help="(default tracking-code)"
    )
    summary.add_argument(
        "--tracking-code", action="append", metavar="CODE", help="count only this code (repeatable)"
    )


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class TailOptions:
    selection: OutcomeFilter
    start: datetime | str  # a moment, or "beginning" / "end"
    as_json: bool
    limit: int | None
    timeout: float | None


@dataclass(frozen=True, slots=True)
class SummaryOptions:
    selection: OutcomeFilter
    since: datetime
    until: datetime | None
    by: str


def _moment(args: argparse.Namespace, dest: str, now: datetime) -> datetime | None:
    text = getattr(args, dest)
    if text is None:
        return None
    try:
        return resolve_time(text, now)
    except ValueError as exc:
        raise InvalidOption("--" + dest.replace("_", "-"), str(exc)) from None


def _selection(args: argparse.Namespace) -> OutcomeFilter:
    return OutcomeFilter(
        tracking_codes=frozenset(args.tracking_code or ()),
        test_ids=frozenset(getattr(args, "test_id", None) or ()),
        outcomes=frozenset(getattr(args, "outcome", None) or ()),
    )


def tail_options(args: argparse.Namespace, now: datetime) -> TailOptions:
    """What ``outcomes tail`` does; ``InvalidOption`` naming the flag if it makes no sense."""
    if args.limit is not None and args.limit < 1:
        raise InvalidOption("--limit", "must be at least 1")
    timeout = None
    if args.timeout is not None:
        try:
            timeout = parse_duration(args.timeout)
        except ValueError as exc:
            raise InvalidOption("--timeout", str(exc)) from None
        if timeout <= 0:
            raise InvalidOption("--timeout", "must be longer than 0")
    since = _moment(args, "since", now)
    start: datetime | str = since or ("beginning" if args.from_beginning else "end")
    return TailOptions(_selection(args), start, args.json, args.limit, timeout)


def summary_options(args: argparse.Namespace, now: datetime) -> SummaryOptions:
    """What ``outcomes summary`` reads; ``InvalidOption`` naming the flag if it makes no sense."""
    since = _moment(args, "since", now)
    assert since is not None  # --since has a default
    until = _moment(args, "until", now)
    if until is not None and until <= since:
        raise InvalidOption("--until", "must be later than --since")
    return SummaryOptions(_selection(args), since, until, args.by)


# -------------------------------------------------------------------------------------- kafka


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@contextlib.contextmanager
def _quiet_kafka_logs() -> Iterator[None]:
    """While connecting, the failure is ours to report in one line, not aiokafka's to log."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.asynccontextmanager
async def _setting_up(bootstrap: str) -> AsyncIterator[None]:
    """Bound a step of reaching Kafka; its failure becomes ``TopicUnreadable``."""
    try:
        with _quiet_kafka_logs():
            async with asyncio.timeout(CONNECT_TIMEOUT):
                yield
    except (KafkaError, TimeoutError, OSError) as exc:
        raise TopicUnreadable(
            f"cannot reach Kafka at {bootstrap} ({exc.__class__.__name__})"
        ) from None


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``; ``TopicUnreadable`` if there is no such topic."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="itep-webhooks-outcomes",
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    try:
        await admin.start()
        # Listed first: describing a missing topic could make a broker auto-create it.
        if topic not in await admin.list_topics():
            raise TopicUnreadable(f"no topic {topic!r} on Kafka at {bootstrap}")
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    numbers = sorted(p["partition"] for doc in described for p in doc["partitions"])
    return [TopicPartition(topic, number) for number in numbers]


@contextlib.asynccontextmanager
async def _topic_reader(
    settings: Settings,
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A consumer of no group with every partition of the outcome topic assigned."""
    bootstrap, topic = settings.kafka_bootstrap_servers, settings.outcomes_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # an offset gone to retention: the oldest kept
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        client_id="itep-webhooks-outcomes",
    )
    try:
        async with _setting_up(bootstrap):
            partitions = await _partitions(bootstrap, topic)
            await consumer.start()
        consumer.assign(partitions)
        yield consumer, partitions
    finally:
        with _quiet_kafka_logs():
            await consumer.stop()


async def _offsets_at(
    consumer: AIOKafkaConsumer,
    partitions: Sequence[TopicPartition],
    moment: datetime,
    ends: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Per partition, the first offset published at or after ``moment``, else its end."""
    found = await consumer.offsets_for_times({tp: _millis(moment) for tp in partitions})
    return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in partitions}


def _records(batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> list[Any]:
    return sorted((r for records in batch.values() for r in records), key=lambda r: r.timestamp)


def _report_unreadable(record: ConsumerRecord[Any, Any]) -> None:
    print(
        f"outcomes: skipped a record that is not an outcome "
        f"({record.topic}/{record.partition}/{record.offset})",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------- tail


def _json_line(value: bytes, doc: dict[str, Any]) -> str:
    # As on the topic; re-encoded only if its own line breaks would split it.
    return (orjson.dumps(doc) if b"\n" in value or b"\r" in value else value).decode()


async def _tail(settings: Settings, options: TailOptions) -> int:
    async with _topic_reader(settings) as (consumer, partitions):
        async with _setting_up(settings.kafka_bootstrap_servers):
            if options.start == "beginning":
                starts = await consumer.beginning_offsets(partitions)
            else:
                ends = await consumer.end_offsets(partitions)
                starts = ends
                if isinstance(options.start, datetime):
                    starts = await _offsets_at(consumer, partitions, options.start, ends)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        where = (
            f"since {format_time(options.start)}"
            if isinstance(options.start, datetime)
            else f"from the {options.start}"
        )
        print(
            f"outcomes: following {settings.outcomes_topic} {where} "
            f"({len(partitions)} partitions); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        return await _follow(consumer, options)


async def _follow(consumer: AIOKafkaConsumer, options: TailOptions) -> int:
    loop = asyncio.get_running_loop()
    printed = 0
    heard_at = loop.time()
    while True:
        wait = _POLL_SECONDS
        if options.timeout is not None:
            wait = min(wait, heard_at + options.timeout - loop.time())
            if wait <= 0:
                return 0
        records = _records(await consumer.getmany(timeout_ms=max(1, int(wait * 1000))))
        if records:
            heard_at = loop.time()
        for record in records:
            doc = decode_record(record.value)
            if doc is None:
                _report_unreadable(record)
                continue
            if not options.selection.matches(doc):
                continue
            published = datetime.fromtimestamp(record.timestamp / 1000, UTC)
            print(_json_line(record.value, doc) if options.as_json else format_line(doc, published))
            printed += 1
            if options.limit is not None and printed >= options.limit:
                sys.stdout.flush()
                return 0
        sys.stdout.flush()


# ------------------------------------------------------------------------------------- summary


class _Progress:
    """Progress on stderr, once per ``PROGRESS_INTERVAL``, from the first interval on."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar = sys.stderr.isatty()
        self._loop = asyncio.get_running_loop()
        self._shown_at = self._loop.time()
        self._shown = False

    def update(self, done: int) -> None:
        now = self._loop.time()
        if now - self._shown_at >= PROGRESS_INTERVAL:
            self._shown_at = now
            self._show(done)

    def finish(self) -> None:
        if self._shown:
            self._show(self.total)
            if self._bar:
                print(file=sys.stderr)

    def _show(self, done: int) -> None:
        self._shown = True
        text = format_progress(done, self.total, bar=self._bar)
        if self._bar:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)


async def _read_window(
    consumer: AIOKafkaConsumer,
    window: Mapping[TopicPartition, tuple[int, int]],
    options: SummaryOptions,
    summary: OutcomeSummary,
) -> None:
    """Add the records of offsets ``[start, stop)`` per partition, published in the window."""
    if not window:
        return  # and keep the assignment: aiokafka 0.14's stop() hangs after assign([])
    loop = asyncio.get_running_loop()
    since_ms = _millis(options.since)
    until_ms = _millis(options.until) if options.until is not None else None
    progress = _Progress(sum(stop - start for start, stop in window.values()))
    consumer.assign(list(window))
    for tp, (start, _) in window.items():
        consumer.seek(tp, start)
    left = set(window)
    positions = {tp: start for tp, (start, _) in window.items()}
    heard_at = loop.time()
    while left:
        batch = await consumer.getmany(*left, timeout_ms=int(_POLL_SECONDS * 1000))
        for tp, records in batch.items():
            stop = window[tp][1]
            for record in records:
                if record.offset >= stop:
                    break
                if record.timestamp < since_ms or (
                    until_ms is not None and record.timestamp >= until_ms
                ):
                    continue  # in the offset range, but a producer's clock put it outside
                doc = decode_record(record.value)
                if doc is None:
                    _report_unreadable(record)
                elif options.selection.matches(doc):
                    summary.add(doc)
            if records:
                heard_at = loop.time()
        for tp in list(left):
            positions[tp] = await consumer.position(tp)
            if positions[tp] >= window[tp][1]:
                left.discard(tp)
                consumer.pause(tp)
        done = sum(min(positions[tp], stop) - start for tp, (start, stop) in window.items())
        if left and loop.time() - heard_at > STALL_TIMEOUT:
            raise TopicUnreadable(
                f"Kafka stopped answering: read {done} of {progress.total} records"
            )
        progress.update(done)
    progress.finish()


async def _summary(settings: Settings, options: SummaryOptions) -> int:
    async with _topic_reader(settings) as (consumer, partitions):
        async with _setting_up(settings.kafka_bootstrap_servers):
            until = options.until or datetime.now(UTC)
            ends = await consumer.end_offsets(partitions)
            starts = await _offsets_at(consumer, partitions, options.since, ends)
            stops = ends
            if options.until is not None:
                stops = await _offsets_at(consumer, partitions, options.until, ends)
        window = {tp: (starts[tp], stops[tp]) for tp in partitions if stops[tp] > starts[tp]}
        summary = OutcomeSummary(options.by)
        await _read_window(consumer, window, options, summary)
    print(
        format_window(
            settings.outcomes_topic,
            format_time(options.since),
            format_time(until),
            summary.records,
        )
    )
    print("\n".join(format_table(summary.rows(), summary.total(), options.by)))
    return 0


# ----------------------------------------------------------------------------------- commands


def _fail(message: str, status: int) -> int:
    print(f"outcomes: {message}", file=sys.stderr)
    return status


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``args.outcomes_command``; return the exit status."""
    now = datetime.now(UTC)
    try:
        if args.outcomes_command == "tail":
            command = _tail(settings, tail_options(args, now))
        else:
            command = _summary(settings, summary_options(args, now))
    except InvalidOption as exc:
        return _fail(f"{exc.flag}: {exc.rule}", 2)
    try:
        return await command
    except TopicUnreadable as exc:
        return _fail(str(exc), 1)
    except KafkaError as exc:
        return _fail(f"Kafka error ({exc.__class__.__name__})", 1)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and let the exit flush go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
