"""``itep-webhooks run --processes 2``: one supervisor, two workers sharing the group's
partitions, one /metrics, one fate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import event_dict
from tests.integration.harness import (
    LOG_DIR,
    ROOT,
    Stack,
    TopicReader,
    add_tracking_code,
    committed_offsets,
    final_for,
    free_port,
    publish,
)
from tests.integration.test_observability import promtool
from tests.receiver import Receiver

pytestmark = pytest.mark.integration

PARTITIONS = {"0", "1", "2"}  # the stack's events topic
WORKERS = {"0", "1"}


@dataclass
class Group:
    """``python -m consumer run --processes 2`` as a child process of the test."""

    process: asyncio.subprocess.Process
    port: int
    log: Path
    session: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(f"http://127.0.0.1:{self.port}{path}") as response:
            return response.status, await response.text()

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until the group's ``/readyz`` answers 200 (every worker consumes)."""
        async with asyncio.timeout(timeout):
            while True:
                assert self.process.returncode is None, "the supervisor exited early"
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    if (await self.get("/readyz"))[0] == 200:
                        return
                await asyncio.sleep(0.1)

    async def lag_owners(self) -> dict[str, str]:
        """Partition -> the worker exporting its lag, from the group's /metrics."""
        status, text = await self.get("/metrics")
        assert status == 200
        owners: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "itep_consumer_lag":
                    assert sample.labels["partition"] not in owners, "a partition counted twice"
                    owners[sample.labels["partition"]] = sample.labels["worker"]
        return owners

    def workers(self) -> list[int]:
        """The pids of the supervisor's children."""
        return children_of(self.process.pid)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
        yield client


@pytest.fixture
async def group(stack: Stack, session: aiohttp.ClientSession) -> AsyncIterator[Group]:
    """The group, started; stopped with SIGTERM (or killed) at the end of the test."""
    port = free_port()
    env = {**os.environ, **stack.env(HTTP_PORT=str(port), LOG_LEVEL="info", LOG_FORMAT="json")}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{stack.group}.log"
    with log.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "consumer", "run", "--processes", "2"),
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # a process group of its own, as under a terminal
        )
    running = Group(process, port, log, session)
    try:
        yield running
    finally:
        workers = running.workers()
        if process.returncode is None:
            try:
                await running.stop()
            except TimeoutError:
                process.kill()
                await process.wait()
        await wait_gone(workers)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_gone(pids: list[int], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while any(alive(pid) for pid in pids):
            await asyncio.sleep(0.1)


def log_events(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(line)
            if isinstance(doc, dict):
                lines.append(doc)
    return lines


async def test_two_workers_share_the_partitions_deliver_each_event_once_and_stop_clean(
    stack: Stack, group: Group, receiver: Receiver
) -> None:
    """Both workers own partitions and deliver; each event gets one webhook and one final
    outcome; /metrics, /healthz and /readyz speak for both; SIGTERM drains and commits all."""
    await add_tracking_code(stack.database_url, "PROC", receiver.url)
    await group.ready()
    assert len(group.workers()) == 2
    async with asyncio.timeout(30):
        while set((owners := await group.lag_owners()).values()) != WORKERS:
            await asyncio.sleep(0.2)
    assert set(owners) == PARTITIONS

    events = [event_dict(test_id=f"PROC{i}", tracking_code="PROC") for i in range(60)]
    await publish(stack.bootstrap, stack.events_topic, events)
    ids = {e["event_id"] for e in events}
    async with TopicReader(stack.bootstrap, stack.outcomes_topic) as outcomes:
        await outcomes.until(final_for(ids), timeout=60)
        await outcomes.read_for(1.0)  # a second final outcome would show up here
    finals = Counter(d["event_id"] for d in outcomes.values() if d["outcome"] != "retry_scheduled")
    assert finals == dict.fromkeys(ids, 1)
    assert {d["outcome"] for d in outcomes.values()} == {"delivered"}
    assert Counter(r.headers["webhook-id"] for r in receiver.requests) == dict.fromkeys(ids, 1)

    status, text = await group.get("/metrics")
    assert status == 200
    promtool("check", "metrics", stdin=text.encode())
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    delivered = {
        dict(labels)["worker"]: value
        for (name, labels), value in values.items()
        if name == "itep_webhook_attempts_total" and dict(labels)["result"] == "delivered"
    }
    assert set(delivered) == WORKERS, "both workers delivered"
    assert sum(delivered.values()) == 60
    assert values[("itep_workers_configured", ())] == 2
    assert values[("itep_workers_running", ())] == 2
    for worker in WORKERS:
        assert values[("itep_worker_up", (("worker", worker),))] == 1
        assert values[("itep_ready", (("worker", worker),))] == 1
    for path, good in (("/healthz", "ok"), ("/readyz", "ready")):
        status, body = await group.get(path)
        assert (status, orjson.loads(body)) == (
            200,
            {"status": good, "workers": dict.fromkeys(WORKERS, good)},
        )

    assert await group.stop() == 0
    offsets = await committed_offsets(stack.bootstrap, stack.group)
    published = Counter(r.partition for r in await _records(stack))
    assert offsets == {p: published[p] for p in offsets}, "everything handled was committed"
    assert sum(offsets.values()) == 60
    stopped = [e for e in log_events(group.log) if e.get("event") == "service_stopped"]
    assert sorted(e["worker"] for e in stopped) == [0, 1]


async def _records(stack: Stack) -> list[Any]:
    async with TopicReader(stack.bootstrap, stack.events_topic) as reader:
        return await reader.until(lambda records: len(records) >= 60)


async def test_a_worker_that_dies_stops_the_other_and_fails_the_group(group: Group) -> None:
    """SIGKILL to one worker: the supervisor stops the other cleanly and exits 1, without
    starting a worker again (the orchestrator restarts the group)."""
    await group.ready()
    first, second = group.workers()
    os.kill(first, signal.SIGKILL)
    assert await asyncio.wait_for(group.process.wait(), 60) == 1
    assert not alive(first)
    assert not alive(second)
    events = log_events(group.log)
    (exited,) = [e for e in events if e.get("event") == "worker_exited"]
    assert (exited["pid"], exited["status"]) == (first, -signal.SIGKILL)
    assert [e["worker"] for e in events if e.get("event") == "worker_started"] == [0, 1]
    assert any(e.get("event") == "service_stopped" for e in events), "the other one drained"


async def test_a_killed_supervisor_leaves_no_worker_behind(group: Group) -> None:
    """SIGKILL to the supervisor: each worker gets SIGTERM from the kernel, drains, exits."""
    await group.ready()
    workers = group.workers()
    assert len(workers) == 2
    assert await group.stop(signal.SIGKILL) == -signal.SIGKILL
    await wait_gone(workers, timeout=30)
    stopped = [e for e in log_events(group.log) if e.get("event") == "service_stopped"]
    assert sorted(e["worker"] for e in stopped) == [0, 1], "each drained as on SIGTERM"


async def test_ctrl_c_reaching_every_process_of_the_group_is_still_one_clean_stop(
    group: Group,
) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C; systemd signals a unit's
    cgroup alike): each worker also gets the supervisor's SIGTERM, and still drains."""
    await group.ready()
    os.killpg(group.process.pid, signal.SIGINT)
    assert await asyncio.wait_for(group.process.wait(), 60) == 0
    events = [e.get("event") for e in log_events(group.log)]
    assert events.count("service_stopped") == 2
    assert "service_killed" not in events


async def test_a_start_up_failure_of_the_workers_is_the_group_s_exit_status() -> None:
    """A DATABASE_URL naming no database: every worker exits 2, and so does the supervisor."""
    url = "postgresql://postgres@127.0.0.1:5432/no_such_database_here"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", "run", "--processes", "2"),
        env={**os.environ, "DATABASE_URL": url, "HTTP_PORT": "0", "LOG_LEVEL": "error"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "itep-webhooks: bad setting DATABASE_URL" in err.decode()
