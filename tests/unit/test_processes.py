"""The parts of ``run --processes N`` that need no broker: the group's HTTP front against
workers faked on loopback, the worker's watch on its supervisor, the flag."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.cli import main
from consumer.metrics import Metrics
from consumer.processes.front import GroupFront, GroupMetrics, WorkerAddress
from consumer.processes.worker import _parent_watch_routine, set_parent_death_signal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(handlers: dict[str, Handler]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    for path, handler in handlers.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def worker_handlers(*, ready: bool, events: int) -> dict[str, Handler]:
    metrics = Metrics()
    metrics.events.labels("trigger").inc(events)
    metrics.ready.set(1 if ready else 0)

    async def metrics_page(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry))

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready"}, status=503)

    return {"/metrics": metrics_page, "/healthz": healthz, "/readyz": readyz}


@pytest.fixture
async def front() -> AsyncIterator[tuple[GroupFront, int]]:
    """Worker 0 ready, worker 1 starting (503 on /readyz), worker 2 hanging on everything."""
    release = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    runners = []
    workers = []
    specs: list[dict[str, Handler]] = [
        worker_handlers(ready=True, events=3),
        worker_handlers(ready=False, events=4),
        {"/metrics": hang, "/healthz": hang, "/readyz": hang},
    ]
    for index, handlers in enumerate(specs):
        runner, port = await serve(handlers)
        runners.append(runner)
        workers.append(WorkerAddress(str(index), port))
    port = free_port()
    group = GroupFront(port, workers, GroupMetrics(), running=lambda: 3, timeout=0.5)
    await group.start()
    try:
        yield group, port
    finally:
        release.set()
        await group.close()
        for runner in runners:
            await runner.cleanup()


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_metrics_merge_the_workers_that_answer_and_count_the_one_that_does_not(
    front: tuple[GroupFront, int],
) -> None:
    _, port = front
    started = time.monotonic()
    status, text = await get(port, "/metrics")
    assert time.monotonic() - started < 2, "a hanging worker holds the scrape up"
    assert status == 200
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    consumed = {
        dict(labels)["worker"]: value
        for (name, labels), value in values.items()
        if name == "itep_events_consumed_total"
    }
    assert consumed == {"0": 3, "1": 4}
    assert values[("itep_ready", (("worker", "0"),))] == 1
    assert values[("itep_ready", (("worker", "1"),))] == 0
    assert values[("itep_workers_configured", ())] == 3
    assert values[("itep_workers_running", ())] == 3
    up = {w: values[("itep_worker_up", (("worker", w),))] for w in "012"}
    assert up == {"0": 1, "1": 1, "2": 0}
    errors = {w: values[("itep_worker_scrape_errors_total", (("worker", w),))] for w in "012"}
    assert errors == {"0": 0, "1": 0, "2": 1}


async def test_readyz_is_200_only_when_every_worker_is_ready(
    front: tuple[GroupFront, int],
) -> None:
    _, port = front
    status, body = await get(port, "/readyz")
    assert status == 503
    assert body == (
        '{"status": "not_ready", "workers": {"0": "ready", "1": "not_ready", "2": "no_answer"}}'
    )


async def test_healthz_is_503_when_a_worker_does_not_answer(front: tuple[GroupFront, int]) -> None:
    _, port = front
    status, body = await get(port, "/healthz")
    assert status == 503
    assert '"2": "no_answer"' in body


async def test_healthz_is_200_when_every_worker_answers_200() -> None:
    runner, worker_port = await serve(worker_handlers(ready=True, events=0))
    port = free_port()
    group = GroupFront(port, [WorkerAddress("0", worker_port)], GroupMetrics(), running=lambda: 1)
    await group.start()
    try:
        assert await get(port, "/healthz") == (200, '{"status": "ok", "workers": {"0": "ok"}}')
        assert await get(port, "/readyz") == (
            200,
            '{"status": "ready", "workers": {"0": "ready"}}',
        )
    finally:
        await group.close()
        await runner.cleanup()


async def test_a_taken_port_is_an_os_error_at_start() -> None:
    runner, taken = await serve({})
    group = GroupFront(taken, [], GroupMetrics(), running=lambda: 0)
    try:
        with pytest.raises(OSError, match=r".+"):
            await group.start()
    finally:
        await group.close()
        await runner.cleanup()


async def test_the_watch_stops_the_worker_once_its_supervisor_is_gone() -> None:
    """A parent pid that is not this process's parent any more: stop at once."""
    stop = asyncio.Event()
    await asyncio.wait_for(_parent_watch_routine(os.getppid() + 1_000_000, stop), 1)
    assert stop.is_set()


async def test_the_watch_ends_when_the_worker_stops_for_another_reason() -> None:
    stop = asyncio.Event()
    watch = asyncio.create_task(_parent_watch_routine(os.getppid(), stop))
    await asyncio.sleep(0.05)
    assert not watch.done()
    stop.set()
    await asyncio.wait_for(watch, 2)


def test_linux_takes_the_parent_death_signal() -> None:
    assert set_parent_death_signal(signal.SIGTERM) is True
    assert set_parent_death_signal(0) is True  # off again for the test process


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_processes_must_be_a_whole_number_of_at_least_one(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--processes", value])
    assert exit_info.value.code == 2
    assert "--processes: " in capsys.readouterr().err


def test_a_bad_processes_setting_is_a_bad_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCESSES", "0")
    assert main(["run"]) == 2
    assert capsys.readouterr().err == (
        "itep-webhooks: bad setting PROCESSES: 0 must be at least 1\n"
    )


def test_run_help_shows_processes_and_hides_the_worker_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--processes N" in out
    assert "--worker" not in out
    assert "--http-fd" not in out
