"""Helpers of `make drills` (scripts/drills.py): the pieces every drill is built from.

- a receiver process (``python scripts/drills_lib.py receiver PORT``): one aiohttp process
  that opens and closes partner endpoints on loopback ports when told to over a control
  port, each with a behaviour (answer at once, never answer, answer 503 after a delay,
  fail a share of requests at random), and records every request's arrival (wall clock,
  port, ``webhook-id``, the payload's TestID and Status, the answer it chose);
- ``DrillStack``: one run's own topics, consumer group and fresh database (``drill_<uuid>``,
  migrated with ``apply_migrations``, dropped afterwards);
- ``ServiceProc``: the real service, ``python -m consumer run``, as its own process with a
  JSON log file; ``LogSummary`` counts and quotes its log lines;
- ``OutcomeReader``: reads the run's outcome topic from the start, in the background;
- ``PrivateKafka`` / ``PrivatePostgres``: a broker and a database server started by the
  drills themselves (same jars and JVM flags as scripts/stack.sh, same Postgres binaries),
  so that the restart drill can stop and start them without touching the shared stack.

Every wait here is bounded in time; every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import shutil
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from consumer.admin.migrate import apply_migrations
from consumer.events import Results, SectionResult
from consumer.publisher import MAX_RECORD_BYTES
from consumer.topics import ensure_topics
from producers.builder import ExamEventMessage
from producers.publisher import Delivery, EventPublisher

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".local" / "drills"
PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


async def wait_until(
    done: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    *,
    every: float = 0.25,
    tick: Callable[[], None] | None = None,
    tick_every: float = 5.0,
) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout`` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    shown = loop.time()
    while True:
        result = done()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        now = loop.time()
        if now >= deadline:
            return False
        if tick is not None and now - shown >= tick_every:
            shown = now
            tick()
        await asyncio.sleep(min(every, deadline - now))


# ------------------------------------------------------------------------------ events

RESULTS = Results(
    score_report_url="https://results.example.org/r/x?sig=a+b&x=1",
    overall_level=4.3,
    overall_cefr="B2",
    sections={
        name: SectionResult(
            level=4.0,
            score=60,
            percent=60,
            cefr="B1",
            question_count=2 if name == "writing" else None,
        )
        for name in ("grammar", "listening", "reading", "writing", "speaking")
    },
)


def complete_event(test_id: str, code: str, oid: str = "") -> ExamEventMessage:
    """A Complete event with all five sections: the contract's biggest regular payload."""
    return ExamEventMessage(
        test_id=test_id,
        oid=oid or f"crm-{test_id}",
        tracking_code=code,
        status="Complete",
        previous_status="Review",
        duration_minutes=80,
        finished_on="2026-11-24",
        results=RESULTS,
    )


def test_sequence(test_id: str, code: str) -> list[ExamEventMessage]:
    """Four trigger events of one test, in the order an exam may go through them:
    technical issue, reset, completed, invalidated."""
    return [
        ExamEventMessage(
            test_id=test_id, tracking_code=code, status="Problem", previous_status="Incomplete"
        ),
        ExamEventMessage(
            test_id=test_id,
            tracking_code=code,
            event_type="reset",
            reset_type="full",
            status="Ready",
            previous_status="Problem",
        ),
        complete_event(test_id, code),
        ExamEventMessage(
            test_id=test_id,
            tracking_code=code,
            status="Invalidated",
            previous_status="Complete",
            duration_minutes=80,
            finished_on="2026-11-24",
        ),
    ]


async def publish(bootstrap: str, topic: str, events: list[ExamEventMessage]) -> list[Delivery]:
    """Publish with the upstream library, 5,000 at a time; per-test order is kept."""
    out: list[Delivery] = []
    async with EventPublisher(bootstrap, topic) as publisher:
        for start in range(0, len(events), 5000):
            out.extend(await publisher.publish_many(events[start : start + 5000]))
    return out


# ---------------------------------------------------------------------------- receiver


@dataclass(frozen=True, slots=True)
class Arrival:
    seq: int
    port: int
    path: str
    webhook_id: str
    test_id: str
    status: str
    at: float  # wall clock (time.time()) when the request reached the handler
    answer: int  # the status it answered (0: never answered)


@dataclass
class _Endpoint:
    port: int
    behaviour: str
    delay: float
    fail_ratio: float
    rng: random.Random
    runner: web.AppRunner | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)


class _ReceiverServer:
    """The receiver process's state: open endpoints and every arrival."""

    BEHAVIOURS = ("ok", "hang", "slow503", "flaky")

    def __init__(self) -> None:
        self.endpoints: dict[int, _Endpoint] = {}
        self.arrivals: list[tuple[Any, ...]] = []
        self.seq = 0

    async def handle(self, endpoint: _Endpoint, request: web.Request) -> web.StreamResponse:
        at = time.time()
        body = await request.read()
        test_id = status = ""
        try:
            data = orjson.loads(parse_qs(body.decode("ascii"))["data"][0])
            test_id, status = str(data.get("TestID", "")), str(data.get("Status", ""))
        except (ValueError, KeyError, IndexError, UnicodeDecodeError, orjson.JSONDecodeError):
            pass
        behaviour = endpoint.behaviour
        if behaviour == "hang":
            answer = 0
        elif behaviour == "slow503":
            answer = 503
        elif behaviour == "flaky":
            answer = 503 if endpoint.rng.random() < endpoint.fail_ratio else 200
        else:
            answer = 200
        self.seq += 1
        self.arrivals.append(
            (
                self.seq,
                endpoint.port,
                request.path,
                request.headers.get("webhook-id", ""),
                test_id,
                status,
                at,
                answer,
            )
        )
        if behaviour == "hang":
            # Connection accepted, request read, no answer: until the endpoint is closed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3600):
                    await endpoint.release.wait()
            return web.Response(status=503)
        if endpoint.delay:
            await asyncio.sleep(endpoint.delay)
        return web.Response(status=answer, text="ok" if answer == 200 else "unavailable")

    async def open(self, request: web.Request) -> web.Response:
        spec = await request.json()
        port = int(spec["port"])
        behaviour = str(spec.get("behaviour", "ok"))
        if behaviour not in self.BEHAVIOURS or port in self.endpoints:
            return web.json_response({"error": f"bad behaviour or port in use: {spec}"}, status=400)
        endpoint = _Endpoint(
            port=port,
            behaviour=behaviour,
            delay=float(spec.get("delay", 0.0)),
            fail_ratio=float(spec.get("fail_ratio", 0.0)),
            rng=random.Random(int(spec.get("seed", 0))),
        )

        async def handler(req: web.Request) -> web.StreamResponse:
            return await self.handle(endpoint, req)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True)
        await site.start()
        endpoint.runner = runner
        self.endpoints[port] = endpoint
        return web.json_response({"port": port, "bound_at": time.time()})

    async def close(self, request: web.Request) -> web.Response:
        spec = await request.json()
        await self._close(int(spec["port"]))
        return web.json_response({"closed": True})

    async def _close(self, port: int) -> None:
        endpoint = self.endpoints.pop(port, None)
        if endpoint is not None and endpoint.runner is not None:
            endpoint.release.set()
            await endpoint.runner.cleanup()

    async def close_all(self) -> None:
        for port in list(self.endpoints):
            await self._close(port)

    async def get_arrivals(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        rows = self.arrivals[since:]
        return web.Response(body=orjson.dumps(rows), content_type="application/json")

    async def reset(self, _request: web.Request) -> web.Response:
        self.arrivals.clear()
        return web.json_response({"reset": True})

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"endpoints": sorted(self.endpoints)})


async def _receiver_main(control_port: int) -> None:
    server = _ReceiverServer()
    app = web.Application()
    app.router.add_post("/open", server.open)
    app.router.add_post("/close", server.close)
    app.router.add_get("/arrivals", server.get_arrivals)
    app.router.add_post("/reset", server.reset)
    app.router.add_get("/health", server.health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close_all()
    await runner.cleanup()


class ReceiverClient:
    """Starts the receiver process and drives it over its control port."""

    def __init__(self, log_path: Path) -> None:
        self.control_port = free_port()
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base = f"http://127.0.0.1:{self.control_port}"
        self._cache: list[Arrival] = []

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).resolve()),
                "receiver",
                str(self.control_port),
                cwd=ROOT,
                stdout=log_file,
                stderr=log_file,
            )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

        async def up() -> bool:
            try:
                async with self.session.get(f"{self._base}/health") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        if not await wait_until(up, 30, every=0.1):
            raise RuntimeError("the receiver process did not come up within 30 s")

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    async def open(
        self,
        port: int,
        behaviour: str,
        *,
        delay: float = 0.0,
        fail_ratio: float = 0.0,
        seed: int = 0,
    ) -> float:
        """Bind ``port`` with ``behaviour``; returns the wall-clock time it was bound."""
        spec = {
            "port": port,
            "behaviour": behaviour,
            "delay": delay,
            "fail_ratio": fail_ratio,
            "seed": seed,
        }
        async with self.session.post(f"{self._base}/open", json=spec) as response:
            doc = await response.json()
            if response.status != 200:
                raise RuntimeError(f"receiver: {doc}")
            return float(doc["bound_at"])

    async def close_port(self, port: int) -> None:
        async with self.session.post(f"{self._base}/close", json={"port": port}) as response:
            await response.read()

    async def arrivals(self) -> list[Arrival]:
        """Every arrival since the last ``reset``, in arrival order (fetched incrementally)."""
        url = f"{self._base}/arrivals?since={len(self._cache)}"
        async with self.session.get(url) as response:
            rows = orjson.loads(await response.read())
        self._cache.extend(Arrival(*row) for row in rows)
        return self._cache

    async def reset(self) -> None:
        async with self.session.post(f"{self._base}/reset") as response:
            await response.read()
        self._cache = []

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# ----------------------------------------------------------------------------- helpers


def pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def fmt_counter(counter: Counter[Any]) -> str:
    if not counter:
        return "none"
    return ", ".join(f"{k}: {v:,}" for k, v in counter.most_common())


def first_arrivals(
    arrivals: Iterable[Arrival], ports: set[int] | None = None
) -> dict[str, Arrival]:
    """Each webhook's first arrival (by ``webhook-id``), on ``ports`` when given."""
    out: dict[str, Arrival] = {}
    for arrival in arrivals:
        if ports is None or arrival.port in ports:
            out.setdefault(arrival.webhook_id, arrival)
    return out


async def stop_all(*things: Any) -> None:  # noqa: ANN401 - services, readers, watchers
    for thing in things:
        if thing is not None:
            with contextlib.suppress(Exception):
                await thing.stop()


def longest_pause(logs: LogSummary) -> tuple[float, str]:
    """The longest stretch between a ``fetching_paused`` and the next ``fetching_resumed``
    (logs read with ``keep`` of both), and the pair of lines quoted."""
    best, quote, paused = 0.0, "", None
    for doc in logs.docs:
        if doc.get("event") == "fetching_paused":
            paused = doc
        elif doc.get("event") == "fetching_resumed" and paused is not None:
            seconds = (
                datetime.fromisoformat(doc["timestamp"])
                - datetime.fromisoformat(paused["timestamp"])
            ).total_seconds()
            if seconds > best:
                best = seconds
                quote = orjson.dumps(paused).decode() + "\n" + orjson.dumps(doc).decode()
            paused = None
    return best, quote


def breaker_lines(logs: LogSummary) -> str:
    names = ("breaker_open", "breaker_half_open", "breaker_closed")
    return ", ".join(f"{n} {logs.counts.get(n, 0)}" for n in names)


# ------------------------------------------------------------------------------- stack


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class DrillStack:
    """One run's private topics, consumer group and database."""

    run: str
    bootstrap: str
    admin_dsn: str
    database: str
    database_url: str
    events_topic: str
    outcomes_topic: str
    dlq_topic: str
    group: str

    @classmethod
    async def create(
        cls,
        label: str,
        bootstrap: str,
        admin_dsn: str,
        *,
        topic_configs: Mapping[str, str] | None = None,
        replication: int = 1,
    ) -> DrillStack:
        """``replication`` above 1 (the cluster drills): the topics are created by the
        service's own start-up code (``consumer.topics.ensure_topics``), with that many
        replicas, ``min.insync.replicas`` min(2, replication) and the dead-letter topic's
        16 MiB record limit, exactly as ``TOPIC_REPLICATION_FACTOR`` would have them."""
        run = f"{label}-{uuid.uuid4().hex[:8]}"
        database = f"drill_{uuid.uuid4().hex}"
        stack = cls(
            run=run,
            bootstrap=bootstrap,
            admin_dsn=admin_dsn,
            database=database,
            database_url=with_database(admin_dsn, database),
            events_topic=f"drill-{run}-events",
            outcomes_topic=f"drill-{run}-outcomes",
            dlq_topic=f"drill-{run}-dlq",
            group=f"drill-{run}",
        )
        if replication > 1:
            await ensure_topics(
                bootstrap,
                stack.topics,
                PARTITIONS,
                replication,
                {
                    t: dict(topic_configs or {})
                    | ({"max.message.bytes": str(MAX_RECORD_BYTES)} if t == stack.dlq_topic else {})
                    for t in stack.topics
                },
            )
        else:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.create_topics(
                    [
                        NewTopic(t, PARTITIONS, 1, topic_configs=dict(topic_configs or {}))
                        for t in stack.topics
                    ]
                )
            finally:
                await admin.close()
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        await apply_migrations(stack.database_url)
        return stack

    @property
    def topics(self) -> list[str]:
        return [self.events_topic, self.outcomes_topic, self.dlq_topic]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": self.database_url,
            "EXAM_EVENTS_TOPIC": self.events_topic,
            "OUTCOMES_TOPIC": self.outcomes_topic,
            "DEAD_LETTER_TOPIC": self.dlq_topic,
            "CONSUMER_GROUP": self.group,
            "ALLOW_PRIVATE_ENDPOINTS": "true",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
        }
        env.update(extra)
        return env

    async def add_code(self, code: str, url: str) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(
                "INSERT INTO tracking_codes (code, endpoint_url, signing_secret) "
                "VALUES ($1, $2, 'whsec_ZHJpbGwtc2VjcmV0LWtleS0xMjM0NTY3ODkw')",
                code,
                url,
            )
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def schedule_counts(self) -> dict[str, int]:
        """Rows of scheduled_deliveries by state (every state present, 0 when none);
        ``{"unreachable": 1}`` when the database cannot answer."""
        try:
            rows = await self.fetch(
                "SELECT state, count(*) AS n FROM scheduled_deliveries GROUP BY state"
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return {"unreachable": 1}
        counts = {"pending": 0, "dead": 0}
        counts.update({row["state"]: int(row["n"]) for row in rows})
        return counts

    async def empty_schedule(self) -> bool:
        counts = await self.schedule_counts()
        return "unreachable" not in counts and counts["pending"] == 0

    async def committed(self) -> dict[int, int]:
        """The consumer group's committed offsets of the events topic, by partition."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.events_topic and meta.offset >= 0
        }

    async def close(self) -> None:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await asyncio.wait_for(admin.start(), 20)
            try:
                await asyncio.wait_for(admin.delete_topics(self.topics), 20)
            finally:
                await admin.close()
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError):
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await conn.close()


# ----------------------------------------------------------------------------- service


class ServiceProc:
    """``python -m consumer run`` as a child process; its JSON log goes to ``log_path``."""

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.http_port = free_port()
        self.env = {**os.environ, **env, "HTTP_PORT": str(self.http_port)}
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.rss: list[tuple[float, int]] = []  # (monotonic, kB)
        self.started_at = 0.0
        self._sampler: asyncio.Task[None] | None = None

    @classmethod
    async def launch(
        cls, name: str, env: Mapping[str, str], log_path: Path, *, ready_timeout: float = 60
    ) -> ServiceProc:
        service = cls(name, env, log_path)
        await service.start()
        await service.ready(ready_timeout)
        return service

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumer",
                "run",
                env=self.env,
                cwd=ROOT,
                stdout=log_file,
                stderr=log_file,
            )
        self.started_at = time.monotonic()
        self._sampler = asyncio.create_task(self._sample_routine())

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def ready(self, timeout: float = 60) -> None:
        """Wait until ``/readyz`` answers 200."""
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

            async def ok() -> bool:
                if not self.alive:
                    raise RuntimeError(f"service {self.name} exited early; log {self.log_path}")
                try:
                    async with session.get(url) as response:
                        return response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            if not await wait_until(ok, timeout, every=0.1):
                raise RuntimeError(f"service {self.name} not ready in {timeout:.0f} s")

    async def is_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(url) as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (None once it has exited)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    async def _sample_routine(self) -> None:
        while self.alive:
            kb = self.rss_kb()
            if kb is not None:
                self.rss.append((time.monotonic(), kb))
            await asyncio.sleep(1.0)

    async def kill(self) -> None:
        """SIGKILL, and wait for the exit."""
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._stop_sampler()

    async def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a clean stop), SIGKILL if it overruns ``timeout``; the exit status."""
        if self.process is None:
            return None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._stop_sampler()
        return self.process.returncode

    async def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler


@dataclass
class LogSummary:
    """The service's log lines by event name, with the first line of each quoted."""

    counts: Counter[str] = field(default_factory=Counter)
    levels: Counter[str] = field(default_factory=Counter)
    quotes: dict[str, str] = field(default_factory=dict)
    docs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, paths: Iterable[Path], *, keep: Iterable[str] = ()) -> LogSummary:
        kept = set(keep)
        summary = cls()
        for path in paths:
            if not path.exists():
                continue
            with path.open("rb") as lines:
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if not line.strip():
                        continue
                    try:
                        doc = orjson.loads(line)
                        name = str(doc.get("event")) if isinstance(doc, dict) else "non_json"
                    except orjson.JSONDecodeError:
                        doc, name = None, "non_json"
                    summary.counts[name] += 1
                    if isinstance(doc, dict):
                        summary.levels[str(doc.get("level"))] += 1
                        if "exception" in doc:  # quote the traceback's last line only
                            last = str(doc["exception"]).strip().splitlines()[-1:]
                            doc = {**doc, "exception": f"... {last[0] if last else ''}"}
                            line = orjson.dumps(doc).decode()
                    summary.quotes.setdefault(name, line[:600])
                    if name in kept and isinstance(doc, dict):
                        summary.docs.append(doc)
        return summary

    def quote(self, name: str) -> str:
        return self.quotes.get(name, "")


# ---------------------------------------------------------------------------- outcomes


class OutcomeReader:
    """Reads an outcome topic from the beginning into memory, until stopped.

    Outcomes are keyed by test id, so the outcomes of one event are read in the order the
    service published them.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.by_event: dict[str, list[dict[str, Any]]] = {}
        self.finals: Counter[str] = Counter()  # event_id -> final outcomes seen
        self.count = 0
        self.errors = 0
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=4 << 20,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._routine())

    async def _routine(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError:
                self.errors += 1  # the broker restarting: the consumer reconnects
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for record in records:
                    doc = orjson.loads(record.value)
                    doc["_read_at"] = time.time()
                    self.count += 1
                    event_id = str(doc.get("event_id"))
                    self.by_event.setdefault(event_id, []).append(doc)
                    if doc.get("outcome") != "retry_scheduled":
                        self.finals[event_id] += 1

    def final_count(self, event_ids: Iterable[str]) -> int:
        """How many of ``event_ids`` have at least one final outcome."""
        return sum(1 for e in event_ids if self.finals.get(e, 0) > 0)

    def all_docs(self) -> list[dict[str, Any]]:
        return [doc for docs in self.by_event.values() for doc in docs]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(self._consumer.stop(), 20)


def parse_time(text: str | None) -> float | None:
    """An outcome's RFC 3339 time as Unix seconds."""
    if not text:
        return None
    from datetime import datetime  # noqa: PLC0415 - only here

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------- a stack of our own


def _as_postgres(command: list[str]) -> list[str]:
    """Postgres server tools refuse to run as root: run them as the postgres user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


async def _run(command: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``command``; its exit status and output. The output goes through a file, not a
    pipe: ``pg_ctl start`` leaves the server holding whatever it inherited."""
    import tempfile  # noqa: PLC0415 - only here

    with tempfile.TemporaryFile() as out:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return -1, f"timed out after {timeout:.0f} s"
        out.seek(0)
        return process.returncode or 0, out.read().decode("utf-8", "replace")


class PrivatePostgres:
    """A Postgres server of the drills' own (initdb into .local/drills/), started and
    stopped with pg_ctl as scripts/stack.sh does for the shared one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.log = workdir / "postgres.log"
        self.port = free_port()
        self.bin = self._find_bin()

    @staticmethod
    def _find_bin() -> Path | None:
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
            key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        )
        return found[-1].parent if found else None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def unavailable(self) -> str | None:
        if self.bin is None:
            return "no Postgres server binaries under /usr/lib/postgresql/*/bin"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root without runuser to switch to the postgres user"
        return None

    async def start(self) -> None:
        assert self.bin is not None
        if not (self.data / "PG_VERSION").exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.data.mkdir(mode=0o700, exist_ok=True)
            self.log.touch()
            if os.geteuid() == 0:
                shutil.chown(self.data, "postgres", "postgres")
                shutil.chown(self.log, "postgres", "postgres")
            code, out = await _run(
                _as_postgres(
                    [
                        str(self.bin / "initdb"),
                        "-D",
                        str(self.data),
                        "--auth=trust",
                        "-U",
                        "postgres",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ]
                )
            )
            if code:
                raise RuntimeError(f"initdb failed: {out[-2000:]}")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    "unix_socket_directories = ''\nmax_connections = 200\n"
                )
        code, out = await _run(
            _as_postgres(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        )
        if code:
            raise RuntimeError(f"pg_ctl start failed: {out[-2000:]}")

    async def stop(self) -> None:
        assert self.bin is not None
        if not (self.data / "postmaster.pid").exists():
            return
        code, out = await _run(
            _as_postgres(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ]
            )
        )
        if code:
            raise RuntimeError(f"pg_ctl stop failed: {out[-2000:]}")

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


class PrivateKafka:
    """A single-node KRaft broker of the drills' own, on free ports, run exactly as
    scripts/stack.sh runs the shared one (same jars, JVM flags and server.properties
    template), so that stopping and starting it disturbs nobody else's tests."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "kafka-data"
        self.conf = workdir / "server.properties"
        self.log = workdir / "kafka.log"
        self.port = free_port()
        self.controller_port = free_port()
        self.libs = ROOT / ".local" / "kafka" / "libs"
        self.process: asyncio.subprocess.Process | None = None
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home) / "bin" / "java" if java_home else None
        self.java = str(java) if java is not None and java.exists() else shutil.which("java")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def unavailable(self) -> str | None:
        if self.java is None:
            return "no java on PATH (nor JAVA_HOME)"
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            return f"no Kafka jars in {self.libs} (scripts/stack.sh up fetches them)"
        return None

    def _java_cmd(self) -> list[str]:
        assert self.java is not None
        return [
            self.java,
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'kafka' / 'log4j2.yaml'}",
            "-cp",
            f"{self.libs}/*",
        ]

    async def _format(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        template = (ROOT / "deploy" / "kafka" / "server.properties").read_text()
        self.conf.write_text(
            template.replace("127.0.0.1:9092", self.bootstrap)
            .replace("127.0.0.1:9093", f"127.0.0.1:{self.controller_port}")
            .replace("@DATA_DIR@", str(self.data))
        )
        while True:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cluster_id.startswith("-"):
                break
        code, out = await _run(
            [
                *self._java_cmd(),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.conf),
                "--standalone",
            ]
        )
        if code:
            raise RuntimeError(f"kafka storage format failed: {out[-2000:]}")

    async def start(self, timeout: float = 120) -> float:
        """Start the broker (formatting its storage the first time); seconds until ready."""
        started = time.monotonic()
        if not (self.data / "meta.properties").exists():
            await self._format()
        with self.log.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self._java_cmd(),
                "kafka.Kafka",
                str(self.conf),
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        if not await wait_until(self._answers, timeout, every=0.5):
            raise RuntimeError(f"private Kafka not ready in {timeout:.0f} s (log {self.log})")
        return time.monotonic() - started

    async def _answers(self) -> bool:
        if self.process is None or self.process.returncode is not None:
            raise RuntimeError(f"private Kafka exited (log {self.log})")
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        try:
            await asyncio.wait_for(admin.start(), 5)
            brokers = (await asyncio.wait_for(admin.describe_cluster(), 5)).get("brokers", [])
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await admin.close()
        return bool(brokers)

    async def stop(self) -> float:
        """SIGTERM (controlled shutdown), SIGKILL after 60 s; seconds it took."""
        started = time.monotonic()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return time.monotonic() - started

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "receiver":
        import uvloop

        uvloop.run(_receiver_main(int(sys.argv[2])))
    else:
        print("usage: drills_lib.py receiver CONTROL_PORT", file=sys.stderr)
        sys.exit(2)
