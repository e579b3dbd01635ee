"""The partner endpoints: one process listening on one port per tracking code.

Run as ``python -m bench.receiver --codes N [--delay S] [--stamps]``.
Each webhook is counted when its body has been read (its arrival); it is answered 200 at
once, or after ``--delay`` seconds (a slow partner). With ``--stamps`` the receiver also
reads the ``OID`` of the webhook's ``data`` JSON: an OID ``lat:LABEL:NS`` (the producer's
``time.time_ns()`` at publication) gives one latency sample, arrival minus publication, kept
under LABEL. The control port answers ``GET /stats`` (counts, first and last arrival, and
the latency samples with ``?samples=1``) and ``POST /reset``. The process binds every port
itself (the kernel picks them) and writes their numbers to stdout as one JSON line once all
accept.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
import uvloop
from aiohttp import web

from bench.stack import ROOT


@dataclass(slots=True)
class _Tally:
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def reset(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.samples = defaultdict(list)


def _stamp(body: bytes) -> tuple[str, int] | None:
    """(label, publication ns) from the OID of a form body, when it holds a stamp."""
    for name, value in parse_qsl(body.decode("ascii")):
        if name == "data":
            oid = orjson.loads(value).get("OID", "")
            if isinstance(oid, str) and oid.startswith("lat:"):
                _, label, ns = oid.split(":", 2)
                return label, int(ns)
    return None


def _hook_handler(
    tally: _Tally, delay: float, stamps: bool
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrival = time.time()
        tally.count += 1
        tally.first = tally.first or arrival
        tally.last = arrival
        if stamps:
            stamp = _stamp(body)
            if stamp is not None:
                tally.samples[stamp[0]].append((arrival - stamp[1] / 1e9) * 1000.0)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    return hook


def _control_app(tally: _Tally) -> web.Application:
    async def stats(request: web.Request) -> web.Response:
        doc: dict[str, Any] = {"count": tally.count, "first": tally.first, "last": tally.last}
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
    tally = _Tally()
    hooks = web.Application()
    hooks.router.add_post("/hook", _hook_handler(tally, delay, stamps))
    runners = [
        web.AppRunner(hooks, access_log=None),
        web.AppRunner(_control_app(tally), access_log=None),
    ]
    for runner in runners:
        await runner.setup()
    hook_sockets = [_listen() for _ in range(codes)]
    control = _listen()
    for sock in hook_sockets:
        await web.SockSite(runners[0], sock).start()
    await web.SockSite(runners[1], control).start()
    ports = [sock.getsockname()[1] for sock in hook_sockets]
    sys.stdout.buffer.write(
        orjson.dumps({"ports": ports, "control": control.getsockname()[1]}) + b"\n"
    )
    sys.stdout.flush()
    # Nobody reads the pipe after that line: anything written later goes to the log.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in runners:
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
