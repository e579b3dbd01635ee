"""The partner endpoints: one process listening on one port per tracking code.

Run as ``python -m bench.receiver --codes N [--delay S] [--stamps]``.
Each webhook is counted when its body has been read (its arrival); it is answered 200 at
once, or after ``--delay`` seconds (a slow partner). With ``--stamps`` the receiver also
reads the ``OID`` of the webhook's ``data`` JSON: an OID ``lat:LABEL:NS`` (the producer's
``time.time_ns()`` at publication) gives one latency sample, arrival minus publication, kept
under LABEL. The hook ports are served by a bare ``asyncio.Protocol`` over llhttp
(httptools, the parser the service's client uses): the receiver stands in for partners on
other machines, and an aiohttp server spent 0.11 ms of this machine's CPU per request, as
much as the service spends on a webhook. The control port (aiohttp) answers ``GET /stats``
(counts, requests held for their delayed answer, first and last arrival, and the latency
samples with ``?samples=1``) and ``POST /reset``. The process binds every port itself (the
kernel picks them) and writes their numbers to stdout as one JSON line once all accept.

``ReceiverProcess`` starts one from the benchmark and reads it. It runs in its own process,
so its work never shares an event loop with the client it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import parse_qsl

import aiohttp
import httptools
import orjson
import uvloop
from aiohttp import web

from bench.stack import ROOT


@dataclass(slots=True)
class Tally:
    count: int = 0
    held: int = 0  # requests read whose delayed answer is not yet due
    first: float = 0.0
    last: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def reset(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.samples = defaultdict(list)

    def arrived(self, body: bytes | None) -> None:
        """Count a webhook whose body has just been read; keep the latency sample of a
        ``body`` given (only when stamps are read) whose OID holds one."""
        arrival = time.time()
        self.count += 1
        self.first = self.first or arrival
        self.last = arrival
        if body is not None:
            stamp = _stamp(body)
            if stamp is not None:
                self.samples[stamp[0]].append((arrival - stamp[1] / 1e9) * 1000.0)


def _stamp(body: bytes) -> tuple[str, int] | None:
    """(label, publication ns) from the OID of a form body, when it holds a stamp."""
    for name, value in parse_qsl(body.decode("ascii")):
        if name == "data":
            oid = orjson.loads(value).get("OID", "")
            if isinstance(oid, str) and oid.startswith("lat:"):
                _, label, ns = oid.split(":", 2)
                return label, int(ns)
    return None


_OK: Final = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_OK_CLOSE: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nok"
)
_NOT_FOUND: Final = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BAD_REQUEST: Final = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HookProtocol(asyncio.Protocol):
    """One connection to a hook port: HTTP/1.1 parsed by llhttp (httptools), answered
    with a fixed response, at once or ``delay`` seconds after the request's body has been
    read (a loop timer, no task per request). Anything but ``POST /hook`` gets a 404 and the
    connection closed; a request llhttp rejects, a 400. The answers to webhooks leave in the
    order the webhooks arrived, each due ``delay`` after its arrival (the clients here send
    a request on a connection only once the one before it is answered)."""

    def __init__(self, tally: Tally, delay: float, stamps: bool) -> None:
        self._tally = tally
        self._delay = delay
        self._stamps = stamps
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(_BAD_REQUEST, keep_alive=False)

    # llhttp's callbacks, called from feed_data.
    def on_message_begin(self) -> None:
        self._url = b""
        self._chunks = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        if self._stamps:  # the body is read only for its stamp
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_method() != b"POST" or self._url != b"/hook":
            self._answer(_NOT_FOUND, keep_alive=False)
            return
        self._tally.arrived(b"".join(self._chunks) if self._stamps else None)
        keep_alive = self._parser.should_keep_alive()
        if self._delay:
            self._tally.held += 1
            asyncio.get_running_loop().call_later(self._delay, self._answer_held, keep_alive)
        else:
            self._answer(_OK if keep_alive else _OK_CLOSE, keep_alive)

    def _answer_held(self, keep_alive: bool) -> None:
        self._tally.held -= 1
        self._answer(_OK if keep_alive else _OK_CLOSE, keep_alive)

    def _answer(self, response: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if not keep_alive:
            transport.close()


def _control_app(tally: Tally) -> web.Application:
    async def stats(request: web.Request) -> web.Response:
        doc: dict[str, Any] = {
            "count": tally.count,
            "held": tally.held,
            "first": tally.first,
            "last": tally.last,
        }
        if request.query.get("samples"):
            doc["samples"] = tally.samples
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def reset(_: web.Request) -> web.Response:
        tally.reset()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


def _listen() -> socket.socket:
    """A loopback socket bound to a port the kernel picks, listening. Bound here, in the
    process that serves it, so that no other socket can take the port in between."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # A deep accept queue: a relay may open hundreds of connections at once.
    sock.listen(4096)
    return sock


async def serve(codes: int, delay: float, stamps: bool) -> None:
    """Serve ``codes`` hook ports and a control port; their numbers go to stdout as one
    JSON line, ``{"ports": [...], "control": P}``, once every one of them accepts."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(_control_app(tally), access_log=None)
    await runner.setup()
    hook_sockets = [_listen() for _ in range(codes)]
    control = _listen()
    servers = [
        await loop.create_server(lambda: HookProtocol(tally, delay, stamps), sock=sock)
        for sock in hook_sockets
    ]
    await web.SockSite(runner, control).start()
    ports = [sock.getsockname()[1] for sock in hook_sockets]
    sys.stdout.buffer.write(
        orjson.dumps({"ports": ports, "control": control.getsockname()[1]}) + b"\n"
    )
    sys.stdout.flush()
    # Nobody reads the pipe after that line: anything written later goes to the log.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await runner.cleanup()


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    count: int
    first: float  # time.time() of the first arrival, 0 before any
    last: float
    samples: dict[str, list[float]]  # label -> latency in ms (only when asked for)


class ReceiverProcess:
    """A receiver process with ``codes`` ports; ``urls[i]`` is the endpoint of code i."""

    def __init__(self, codes: int, delay: float, *, stamps: bool = False) -> None:
        self.codes = codes
        self.delay = delay
        self.stamps = stamps
        self.ports: list[int] = []  # known once started
        self.control = 0
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/hook" for port in self.ports]

    async def start(self, log_path: Path) -> None:
        """Start the process and wait for the ports it bound (it picks them itself, so no
        other socket can take one between the choice and the bind)."""
        args = ["--codes", str(self.codes), "--delay", str(self.delay)]
        args += ["--stamps"] if self.stamps else []
        with log_path.open("ab") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.receiver",
                *args,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), 30.0)
        except TimeoutError:
            line = b""
        if not line:
            await self.stop()
            raise RuntimeError(f"receiver did not start; see {log_path}")
        doc = orjson.loads(line)
        self.ports, self.control = [int(port) for port in doc["ports"]], int(doc["control"])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def stats(self, *, samples: bool = False) -> ReceiverStats:
        assert self._session is not None
        url = f"http://127.0.0.1:{self.control}/stats" + ("?samples=1" if samples else "")
        async with self._session.get(url) as response:
            doc = orjson.loads(await response.read())
        return ReceiverStats(doc["count"], doc["first"], doc["last"], doc.get("samples", {}))

    async def reset(self) -> None:
        assert self._session is not None
        async with self._session.post(f"http://127.0.0.1:{self.control}/reset") as response:
            await response.read()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--codes", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--stamps", action="store_true")
    args = parser.parse_args()
    uvloop.run(serve(args.codes, args.delay, args.stamps))


if __name__ == "__main__":
    main()
