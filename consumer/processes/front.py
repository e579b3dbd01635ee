"""``/metrics``, ``/healthz`` and ``/readyz`` of a group of workers on ``HTTP_PORT``.

Each worker serves its own on a loopback port of its own (a socket the supervisor binds and
hands down). The front asks every worker at once, each within ``ASK_TIMEOUT``:

- ``/metrics``: the workers' expositions merged, each sample labelled ``worker``, followed by
  the group's own series (``itep_workers_configured``, ``itep_workers_running``,
  ``itep_worker_up{worker}``, ``itep_worker_scrape_errors_total{worker}``). A worker that does
  not answer is left out of that scrape, with ``itep_worker_up`` 0.
- ``/healthz`` and ``/readyz``: 200 only when every worker answers 200, with each worker's
  answer in ``workers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from consumer.processes.exposition import merge_families, render, with_worker_label

ASK_TIMEOUT: Final = 1.0
NO_ANSWER: Final = "no_answer"


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """Where one worker serves its HTTP API."""

    name: str  # its index, the value of the ``worker`` label
    port: int


@dataclass
class GroupMetrics:
    """The supervisor's own series, beside those of the workers."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.configured = Gauge(
            "itep_workers_configured", "Worker processes the group runs (--processes)", registry=r
        )
        self.running = Gauge(
            "itep_workers_running", "Worker processes of the group alive now", registry=r
        )
        self.up = Gauge(
            "itep_worker_up",
            "1 when the worker answered this scrape of /metrics, else 0 (its series are left out)",
            ["worker"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "itep_worker_scrape_errors",
            "Scrapes of /metrics a worker did not answer within 1 s, or answered with an error",
            ["worker"],
            registry=r,
        )


class GroupFront:
    def __init__(
        self,
        port: int,
        workers: Sequence[WorkerAddress],
        metrics: GroupMetrics,
        *,
        running: Callable[[], int],
        timeout: float = ASK_TIMEOUT,
    ) -> None:
        self._port = port
        self._workers = list(workers)
        self._metrics = metrics
        self._running = running
        self._timeout = timeout
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        metrics.configured.set(len(self._workers))
        for worker in self._workers:
            metrics.up.labels(worker.name).set(0)
            metrics.scrape_errors.labels(worker.name)

    async def start(self) -> None:
        """Serve ``HTTP_PORT``; ``OSError`` when it is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, "0.0.0.0", self._port).start()  # noqa: S104 - scraped by Prometheus
        except OSError:
            await self._runner.cleanup()
            raise
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _ask(self, worker: WorkerAddress, path: str) -> tuple[int, bytes] | None:
        """The worker's status and body, or None when it does not answer in time."""
        assert self._session is not None, "started"
        try:
            async with self._session.get(f"http://127.0.0.1:{worker.port}{path}") as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _ask_all(self, path: str) -> list[tuple[int, bytes] | None]:
        return await asyncio.gather(*(self._ask(worker, path) for worker in self._workers))

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        groups = []
        for worker, answer in zip(self._workers, await self._ask_all("/metrics"), strict=True):
            families = None
            if answer is not None and answer[0] == 200:
                try:
                    families = with_worker_label(answer[1].decode(), worker.name)
                except ValueError:  # UnicodeDecodeError is one
                    families = None
            if families is None:
                self._metrics.up.labels(worker.name).set(0)
                self._metrics.scrape_errors.labels(worker.name).inc()
                continue
            self._metrics.up.labels(worker.name).set(1)
            groups.append(families)
        self._metrics.running.set(self._running())
        body = render(merge_families(groups)) + generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _probe(self, path: str, good: str, bad: str) -> web.Response:
        answers = await self._ask_all(path)
        workers = {
            worker.name: _status_of(answer)
            for worker, answer in zip(self._workers, answers, strict=True)
        }
        if all(answer is not None and answer[0] == 200 for answer in answers):
            return web.json_response({"status": good, "workers": workers})
        return web.json_response({"status": bad, "workers": workers}, status=503)

    async def _healthz(self, _request: web.Request) -> web.Response:
        """200 while every worker's poll loop turns."""
        return await self._probe("/healthz", "ok", "stalled")

    async def _readyz(self, _request: web.Request) -> web.Response:
        """200 while every worker consumes."""
        return await self._probe("/readyz", "ready", "not_ready")


def _status_of(answer: tuple[int, bytes] | None) -> str:
    """What a worker said (its ``status``), or ``no_answer``."""
    if answer is None:
        return NO_ANSWER
    try:
        status = orjson.loads(answer[1]).get("status")
    except (orjson.JSONDecodeError, AttributeError):
        status = None
    return status if isinstance(status, str) else f"http_{answer[0]}"
