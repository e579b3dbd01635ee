"""One worker of a group: the service, started by the supervisor and stopped with it.

What differs from a lone ``itep-webhooks run``:

- Its log lines carry ``worker`` (its index), bound with ``structlog.contextvars``.
- Its HTTP API serves a loopback socket the supervisor bound and handed down (no port to
  pick, so none to race for); the supervisor's front asks it.
- SIGTERM and SIGINT stop it cleanly however often they come: a terminal's Ctrl-C or
  systemd's ``KillMode=control-group`` reach the workers as well as the supervisor, which
  forwards its own SIGTERM, and a second signal must not turn the drain into a kill. Forcing
  is the supervisor's to do (a second signal to it kills the workers).
- It does not outlive the supervisor: Linux sends it SIGTERM when the supervisor dies
  (``PR_SET_PDEATHSIG``), and a routine checks the parent every second besides (other
  systems, and a supervisor that died before the first check). Either way it drains as on
  any SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Final

import structlog

from consumer.service import run_service
from consumer.settings import Settings

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG: Final = 1
PARENT_CHECK_INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """What the supervisor tells a worker on its command line."""

    index: int
    parent_pid: int
    http_fd: int | None  # a listening loopback socket; None when HTTP_PORT is 0


async def run_worker(settings: Settings, place: WorkerPlace) -> None:
    structlog.contextvars.bind_contextvars(worker=place.index)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    set_parent_death_signal(signal.SIGTERM)
    watch = asyncio.create_task(_parent_watch_routine(place.parent_pid, stop), name="parent_watch")
    http_socket = socket.socket(fileno=place.http_fd) if place.http_fd is not None else None
    try:
        await run_service(settings, stop, handle_signals=False, http_socket=http_socket)
    finally:
        watch.cancel()


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (0: no signal); False
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0


async def _parent_watch_routine(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop once the supervisor is gone (this process then has another parent)."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            log.warning("supervisor_gone", supervisor_pid=parent_pid)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_INTERVAL)
