"""``/metrics``, ``/healthz`` and ``/readyz`` on ``HTTP_PORT`` (aiohttp server only).

``/healthz`` answers whether the process should be restarted (the poll loop is stuck),
``/readyz`` whether it consumes (started and not stopping); ``itep_ready`` in ``/metrics`` is
the same answer, 1 or 0, for alerting. It serves ``HTTP_PORT``, or, in a worker of
``run --processes N``, the loopback socket its supervisor handed down.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.metrics import Metrics


class HttpApi:
    def __init__(
        self,
        port: int,
        metrics: Metrics,
        *,
        is_ready: Callable[[], bool],
        is_alive: Callable[[], bool],
        sock: socket.socket | None = None,
    ) -> None:
        self._port = port
        self._sock = sock
        self._metrics = metrics
        self._is_ready = is_ready
        self._is_alive = is_alive
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if self._sock is not None:  # a worker's loopback socket, bound by its supervisor
            site = web.SockSite(self._runner, self._sock)
        else:
            site = web.TCPSite(self._runner, "0.0.0.0", self._port)  # noqa: S104 - scraped by Prometheus
        await site.start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        self._metrics.ready.set(1 if self._is_ready() else 0)
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        """200 while the poll loop turns; 503 when it has been stuck for minutes."""
        if self._is_alive():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "stalled"}, status=503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready"}, status=503)
