"""``itep-events``: publish exam events to ``exam-events`` from the command line.

    itep-events publish --test-id 50613490BP --status Complete --previous-status Review \\
        --tracking-code ACME-UNI --duration-minutes 87 --finished-on 2026-11-24 \\
        --overall-level 4.3 --overall-cefr B2 \\
        --section grammar:level=4.0,score=41,percent=67,cefr=B1
    itep-events publish --file events.jsonl [--skip-invalid]      (``-`` reads stdin)
    itep-events loadgen --count 10000 --rate 500 --tests 2000 --tracking-code ACME-UNI --seed 7

Settings: ``KAFKA_BOOTSTRAP_SERVERS`` and ``EXAM_EVENTS_TOPIC`` from the environment, overridden
by ``--bootstrap-servers`` and ``--topic``.

Every event is validated with the consumer's own parser before anything is sent. With
``--file``, every line is checked first and each bad one is reported by number; unless
``--skip-invalid`` is given, one bad line means nothing from the file is published. With
``--skip-invalid`` the valid lines are published, the bad ones reported, and the exit status is
0. Objects in the file may leave out ``schema_version``, ``event_id``, ``event_type`` and
``occurred_at``; they get the same defaults as ``publish`` without ``--file``.

Exit status: 0 published; 1 Kafka failed; 2 invalid input or a bad setting, nothing published.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

from aiokafka.errors import KafkaError

from consumer.errors import ConfigError, InvalidEvent
from consumer.events import SECTION_NAMES, EventType, Results, SectionResult
from producers.builder import EncodedEvent, ExamEventMessage, parse_json_lines
from producers.loadgen import LoadReport, generate_events, run_loadgen
from producers.publisher import Delivery, EventPublisher, PublisherSettings

__all__ = ["build_parser", "event_from_args", "main", "parse_section", "settings_from_args"]

PROG: Final = "itep-events"
EXIT_KAFKA: Final = 1
EXIT_INVALID: Final = 2

# Flags that describe one event; none may be combined with --file.
_EVENT_FLAGS: Final = (
    "test_id",
    "status",
    "previous_status",
    "event_type",
    "reset_type",
    "tracking_code",
    "oid",
    "duration_minutes",
    "finished_on",
    "occurred_at",
    "event_id",
    "score_report_url",
    "overall_level",
    "overall_cefr",
    "sections",
)
_SECTION_KEYS: Final = ("level", "score", "percent", "cefr", "question_count")


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    connection.add_argument(
        "--topic", help="topic to publish to (default: $EXAM_EVENTS_TOPIC or exam-events)"
    )

    parser = argparse.ArgumentParser(prog=PROG, description="Publish exam events to Kafka.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    publish = commands.add_parser(
        "publish",
        parents=[connection],
        help="publish one event from flags, or a file of JSON lines",
        description="Publish one event described by flags, or every event of --file.",
    )
    event = publish.add_argument_group("the event (CONTRACT section 2)")
    event.add_argument("--test-id", help="the iTEP test id; also the record key")
    event.add_argument("--status", help="Ready, Incomplete, Finished, Review, Problem, ...")
    event.add_argument("--previous-status", help="omit for null")
    event.add_argument("--event-type", help="status_changed (default) or reset")
    event.add_argument("--reset-type", help="required with --event-type reset")
    event.add_argument("--tracking-code", help="omit for null")
    event.add_argument("--oid", help="the remote system's id for the test (default: empty)")
    event.add_argument("--duration-minutes", metavar="N", help="integer >= 0 (default: 0)")
    event.add_argument("--finished-on", metavar="YYYY-MM-DD", help="omit for null")
    event.add_argument("--occurred-at", metavar="RFC3339", help="default: now, UTC")
    event.add_argument("--event-id", help="default: a new UUID4")
    results = publish.add_argument_group("results (required when --status is Complete)")
    results.add_argument("--score-report-url", help="default: empty")
    results.add_argument("--overall-level", metavar="LEVEL", help="number 0.0 to 6.0")
    results.add_argument("--overall-cefr", metavar="CEFR")
    results.add_argument(
        "--section",
        dest="sections",
        action="append",
        metavar="NAME:level=L,score=S,percent=P,cefr=C[,question_count=Q]",
        help=f"one section of {', '.join(SECTION_NAMES)}; repeat for more "
        "(writing needs question_count)",
    )
    source = publish.add_argument_group("from a file")
    source.add_argument(
        "--file", metavar="PATH", help="JSON lines, one event object per line; - reads stdin"
    )
    source.add_argument(
        "--skip-invalid",
        action="store_true",
        help="publish the valid lines of --file even when some are invalid",
    )

    loadgen = commands.add_parser(
        "loadgen",
        parents=[connection],
        help="publish realistic exam lifecycles for benchmarks and demos",
        description="Publish COUNT events over K tests, each test walking a plausible "
        "lifecycle in order.",
    )
    loadgen.add_argument("--count", type=_non_negative_int, required=True, metavar="N")
    loadgen.add_argument(
        "--rate", type=_rate, metavar="R[/s]", help="events per second (default: as fast as it can)"
    )
    loadgen.add_argument(
        "--tests", type=_positive_int, metavar="K", help="distinct test ids (default: N/5)"
    )
    loadgen.add_argument(
        "--tracking-code",
        dest="tracking_codes",
        action="extend",
        nargs="+",
        metavar="CODE",
        help='codes given to the tests at random (default: LOADGEN); "" means no code',
    )
    loadgen.add_argument("--seed", type=int, help="makes ids, lifecycles and results repeatable")
    loadgen.add_argument(
        "--batch-size", type=_positive_int, default=500, help="events per producer batch"
    )
    return parser


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> PublisherSettings:
    """Settings from the environment, with ``--bootstrap-servers`` and ``--topic`` on top."""
    env = dict(environ)
    if args.bootstrap_servers is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap_servers
    if args.topic is not None:
        env["EXAM_EVENTS_TOPIC"] = args.topic
    return PublisherSettings.from_env(env)


def event_from_args(args: argparse.Namespace) -> ExamEventMessage:
    """The event the flags of ``publish`` describe. Raises ``InvalidEvent`` for input that
    cannot even be put into an event (a missing test id, a level that is not a number);
    the contract's rules are checked by ``ExamEventMessage.encode()``."""
    if not args.test_id:
        raise InvalidEvent("test_id", "is required (--test-id)")
    if not args.status:
        raise InvalidEvent("status", "is required (--status)")
    event = ExamEventMessage(
        test_id=args.test_id,
        status=args.status,
        previous_status=args.previous_status,
        event_type=args.event_type or EventType.STATUS_CHANGED,
        reset_type=args.reset_type,
        tracking_code=args.tracking_code,
        oid=args.oid or "",
        duration_minutes=(
            _integer(args.duration_minutes, "duration_minutes")
            if args.duration_minutes is not None
            else 0
        ),
        finished_on=args.finished_on,
        results=_results_from_args(args),
    )
    if args.event_id is not None:
        event = replace(event, event_id=args.event_id)
    if args.occurred_at is not None:
        event = replace(event, occurred_at=args.occurred_at)
    return event


def _results_from_args(args: argparse.Namespace) -> Results | None:
    given = (args.score_report_url, args.overall_level, args.overall_cefr, args.sections)
    if all(value is None for value in given):
        return None
    if args.overall_level is None:
        raise InvalidEvent("results.overall.level", "is required with results (--overall-level)")
    if not args.overall_cefr:
        raise InvalidEvent("results.overall.cefr", "is required with results (--overall-cefr)")
    sections: dict[str, SectionResult] = {}
    for spec in args.sections or ():
        name, section = parse_section(spec)
        if name in sections:
            raise InvalidEvent(f"results.sections.{name}", "is given twice (--section)")
        sections[name] = section
    return Results(
        score_report_url=args.score_report_url or "",
        overall_level=_number(args.overall_level, "results.overall.level"),
        overall_cefr=args.overall_cefr,
        sections=sections,
    )


def parse_section(spec: str) -> tuple[str, SectionResult]:
    """``"writing:level=3,score=62,percent=62,cefr=B1,question_count=2"`` -> name, section."""
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise InvalidEvent(
            "results.sections", f"--section must look like NAME:level=..., got {spec!r}"
        )
    path = f"results.sections.{name}"
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _SECTION_KEYS:
            keys = ", ".join(_SECTION_KEYS)
            raise InvalidEvent(f"{path}", f"{item!r} is not KEY=VALUE with KEY one of {keys}")
        values[key] = value.strip()
    for key in _SECTION_KEYS[:4]:
        if key not in values:
            raise InvalidEvent(f"{path}.{key}", "is required in --section")
    question_count = values.get("question_count")
    return name, SectionResult(
        level=_number(values["level"], f"{path}.level"),
        score=_number(values["score"], f"{path}.score"),
        percent=_number(values["percent"], f"{path}.percent"),
        cefr=values["cefr"],
        question_count=(
            _integer(question_count, f"{path}.question_count")
            if question_count is not None
            else None
        ),
    )


def _integer(text: str, path: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidEvent(path, f"must be an integer, got {text!r}") from None


def _number(text: str, path: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidEvent(path, f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidEvent(path, f"must be a finite number, got {text!r}")
    return int(value) if value.is_integer() and "." not in text else value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _rate(text: str) -> float:
    """``"500"`` or ``"500/s"`` events per second."""
    number = text.removesuffix("/s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 500 or 500/s") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a rate greater than zero")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args, os.environ)
    except ConfigError as exc:
        _error(f"bad setting {exc}")
        return EXIT_INVALID
    try:
        if args.command == "publish":
            return _publish_command(args, settings)
        return _loadgen_command(args, settings)
    except KafkaError as exc:
        _error(f"cannot publish to {settings.bootstrap_servers}: {exc!r}")
        return EXIT_KAFKA


def _publish_command(args: argparse.Namespace, settings: PublisherSettings) -> int:
    if args.file is not None:
        given = [name for name in _EVENT_FLAGS if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            _error(f"--file cannot be combined with event flags ({flags})")
            return EXIT_INVALID
        try:
            lines = _read_lines(args.file)
        except OSError as exc:
            _error(f"--file: cannot read {args.file}: {exc.strerror or exc}")
            return EXIT_INVALID
        parsed = parse_json_lines(lines)
        source = "stdin" if args.file == "-" else args.file
        for line_error in parsed.errors:
            _error(f"{source}: {line_error}")
        if parsed.errors and not args.skip_invalid:
            _error(
                f"{len(parsed.errors)} invalid line(s) in {source}; nothing published "
                "(--skip-invalid publishes the valid lines)"
            )
            return EXIT_INVALID
        records = parsed.events
        skipped = len(parsed.errors)
    else:
        try:
            records = (event_from_args(args).encode(),)
        except InvalidEvent as exc:
            _error(f"invalid event: {exc}")
            return EXIT_INVALID
        skipped = 0
    deliveries = asyncio.run(_publish_records(settings, records)) if records else []
    for record, delivery in zip(records, deliveries, strict=True):
        print(
            f"published event_id={record.event.event_id} test_id={record.event.test_id} "
            f"partition={delivery.partition} offset={delivery.offset}"
        )
    summary = f"published {len(deliveries)} event(s) to {settings.topic}"
    if skipped:
        summary += f", skipped {skipped} invalid line(s)"
    print(summary)
    return 0


def _read_lines(path: str) -> list[bytes]:
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return data.splitlines()


async def _publish_records(
    settings: PublisherSettings, records: Sequence[EncodedEvent]
) -> list[Delivery]:
    async with EventPublisher.from_settings(settings) as publisher:
        return await publisher.publish_many(records)


def _loadgen_command(args: argparse.Namespace, settings: PublisherSettings) -> int:
    tests = args.tests or max(1, args.count // 5)
    codes = [code or None for code in args.tracking_codes or ["LOADGEN"]]
    events = generate_events(args.count, tests=tests, tracking_codes=codes, seed=args.seed)
    report = asyncio.run(_run_loadgen(settings, events, args))
    print(
        f"loadgen published={report.published} tests={min(tests, args.count)} "
        f"elapsed={report.elapsed_seconds:.2f}s rate={report.rate:.1f}/s topic={settings.topic}",
        flush=True,
    )
    return 0


async def _run_loadgen(
    settings: PublisherSettings, events: Iterable[ExamEventMessage], args: argparse.Namespace
) -> LoadReport:
    async with EventPublisher.from_settings(settings) as publisher:
        return await run_loadgen(
            publisher,
            events,
            args.count,
            rate=args.rate,
            batch_size=args.batch_size,
            progress=_print_progress,
        )


def _print_progress(published: int, total: int, elapsed: float) -> None:
    rate = published / elapsed if elapsed > 0 else 0.0
    print(f"progress published={published}/{total} rate={rate:.1f}/s", flush=True)


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
