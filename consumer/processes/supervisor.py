"""The parent of ``itep-webhooks run --processes N``: N workers, one group, one fate.

The supervisor holds no Kafka or Postgres connection. It

- serves ``HTTP_PORT`` (``front.py``) and binds, for each worker, a loopback socket that the
  worker serves its own HTTP API on;
- starts the workers, ``python -m consumer run`` each with the same environment (so the same
  ``CONSUMER_GROUP``: Kafka deals the partitions among them), their index and socket on
  the command line;
- on SIGTERM or SIGINT sends SIGTERM to every worker, waits until each has drained and
  exited, and exits 0 when every one exited 0 (1 otherwise). A second signal kills the workers
  and exits 130, as a second signal does to a lone service;
- when a worker exits on its own (a crash, a start-up failure), stops the others the same
  way and exits non-zero: the worker's own status when it is positive (1 or 2 at start-up),
  else 1. It does not start workers again: the orchestrator restarts the group, as it
  restarts a lone service, and a crash loop shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Final

import structlog

from consumer.errors import StartupError
from consumer.processes.front import GroupFront, GroupMetrics, WorkerAddress
from consumer.settings import Settings

log = structlog.get_logger(__name__)

EXIT_FORCED: Final = 130


class Supervisor:
    def __init__(self, settings: Settings, processes: int) -> None:
        self._settings = settings
        self._count = processes
        self._stop = asyncio.Event()
        self._signalled = False
        self._workers: list[asyncio.subprocess.Process] = []

    async def run(self) -> int:
        """Run the group until a signal or a worker's exit; return the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        log.info("supervisor_starting", processes=self._count, pid=os.getpid())
        sockets = (
            [_loopback_socket() for _ in range(self._count)] if self._settings.http_port else []
        )
        front = None
        try:
            if sockets:
                front = GroupFront(
                    self._settings.http_port,
                    [WorkerAddress(str(i), s.getsockname()[1]) for i, s in enumerate(sockets)],
                    GroupMetrics(),
                    running=self._running,
                )
                try:
                    await front.start()
                except OSError as exc:
                    raise StartupError(f"cannot start: {exc}") from None
            await self._start_workers(sockets)
            for sock in sockets:  # the workers hold them now
                sock.close()
            status = await self._watch()
        finally:
            for sock in sockets:
                sock.close()
            if front is not None:
                await front.close()
        log.info("supervisor_stopped", status=status)
        return status

    async def _start_workers(self, sockets: Sequence[socket.socket]) -> None:
        for index in range(self._count):
            if self._stop.is_set():
                break  # stopped while starting: _watch stops those already started
            command = [sys.executable, "-m", "consumer", "run", "--worker", str(index)]
            command += ["--parent-pid", str(os.getpid())]
            pass_fds: tuple[int, ...] = ()
            if sockets:
                pass_fds = (sockets[index].fileno(),)
                command += ["--http-fd", str(pass_fds[0])]
            try:
                process = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, pass_fds=pass_fds
                )
            except OSError as exc:
                await self._stop_workers()
                raise StartupError(f"cannot start worker {index}: {exc}") from None
            self._workers.append(process)
            log.info("worker_started", worker=index, pid=process.pid)

    async def _watch(self) -> int:
        """Wait for a signal or a worker's exit, then stop them all; the exit status."""
        exits = {asyncio.create_task(p.wait()): i for i, p in enumerate(self._workers)}
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait([*exits, stopped], return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if not self._stop.is_set():
            index = next(i for task, i in exits.items() if task.done())
            code = self._workers[index].returncode
            assert code is not None
            log.error("worker_exited", worker=index, pid=self._workers[index].pid, status=code)
            status = code if code > 0 else 1
            self._stop.set()
        stopped.cancel()
        await self._stop_workers()
        codes = [p.returncode for p in self._workers]
        if status == 0 and any(code != 0 for code in codes):
            status = 1
        return status

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker alive; wait until all have exited."""
        log.info("workers_stopping", running=self._running())
        for process in self._workers:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for index, process in enumerate(self._workers):
            code = await process.wait()
            log.info("worker_stopped", worker=index, pid=process.pid, status=code)

    def _running(self) -> int:
        return sum(1 for p in self._workers if p.returncode is None)

    def _on_signal(self) -> None:
        """The first SIGTERM or SIGINT stops the group cleanly (if a worker's exit has not
        already begun that); a second one kills it."""
        if self._signalled:
            log.warning("service_killed", why="second signal during shutdown")
            for process in self._workers:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            os._exit(EXIT_FORCED)
        self._signalled = True
        self._stop.set()


def _loopback_socket() -> socket.socket:
    """A listening socket on a free loopback port, for one worker's HTTP API."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock
