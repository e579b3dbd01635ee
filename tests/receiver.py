"""An in-process HTTP receiver on loopback that records every request it gets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from aiohttp import web


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    arrived: float
    wall: float = 0.0  # Unix time of arrival, to compare with the outcomes' timestamps

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)

    @property
    def data(self) -> str:
        return self.form["data"][0]


Responder = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """Records requests; ``respond`` decides each answer (200 by default).

    ``respond`` gets the request and its 1-based number, so a test can fail the first tries.
    """

    respond: Responder | None = None
    requests: list[ReceivedRequest] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        loop = asyncio.get_running_loop()
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                query={k: request.query.getall(k) for k in request.query},
                headers=dict(request.headers),
                body=body,
                arrived=loop.time(),
                wall=time.time(),
            )
        )
        async with self._arrived:
            self._arrived.notify_all()
        if self.respond is not None:
            return await self.respond(request, len(self.requests))
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests arrived; fail the test on timeout."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)
