"""The local stack as the benchmark uses it: topics, tracking codes and the relay processes.

Every run gets fresh names (``bench-<run>-...``) and removes what it made: its topics are
deleted and its tracking codes dropped, so runs never mix with each other or with other data
on the broker. A relay (the service, the naive consumer, the faststream relay) is started
as its own process with its output in ``.local/bench/``; ``RelayProcess.tree`` reads its CPU
and memory, children included.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procs import ProcessTree

ROOT: Final = Path(__file__).resolve().parent.parent
# BENCH_SERVICE_CHECKOUT=<dir>: run the service from another checkout (a `git worktree` of
# an older commit, say) to compare two versions with the same benchmark. Only the service:
# the receivers, the reference relays and the benchmark stay this checkout's.
SERVICE_ROOT: Final = Path(os.environ.get("BENCH_SERVICE_CHECKOUT") or ROOT).resolve()


def service_env(module: str) -> dict[str, str]:
    """What a process of ``module`` needs to run the service's code from ``SERVICE_ROOT``."""
    if module != "consumer" or SERVICE_ROOT == ROOT:
        return {}
    return {"PYTHONPATH": str(SERVICE_ROOT)}


LOG_DIR: Final = ROOT / ".local" / "bench"
PARTITIONS: Final = 6
# A fixed key of the benchmark's own codes, so that signatures are computed as for any
# partner with a secret.
SIGNING_SECRET: Final = "whsec_YmVuY2gtc2VjcmV0LWtleS0xMjM0NTY3OA=="  # noqa: S105
_CONSUMED: Final = re.compile(rb"^itep_events_consumed_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports free_port() has returned in this process: never handed out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below the ephemeral range, not returned before in this process.

    A port the kernel hands out for ``bind(0)`` is an ephemeral one, and the thousands of
    client connections of a run take ephemeral ports too: one of them can hold the port
    before the process it is for binds it. A port is free only until it is bound: without
    the record, two picks of one run could draw the same port before either is bound.
    (Receivers bind ports the kernel picks, in their own process, and need none of this.)
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low)  # noqa: S311 - a port, not a secret
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port between 10000 and {low}")


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


class Kafka:
    """Admin calls on the broker; ``async with Kafka(bootstrap)``."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> Kafka:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def create_topics(self, names: Sequence[str]) -> None:
        await self._admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])

    async def delete_topics(self, names: Sequence[str]) -> None:
        if names:
            await self._admin.delete_topics(list(names))

    async def committed(self, group: str, topic: str) -> int:
        """Sum over ``topic``'s partitions of ``group``'s committed offsets (0 before any)."""
        offsets = await self._admin.list_consumer_group_offsets(group)
        return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)

    async def end_total(self, topic: str) -> int:
        """Records in ``topic`` (sum of the partitions' end offsets; topics here start at 0)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(parts)
        finally:
            await consumer.stop()
        return int(sum(ends.values()))


async def add_tracking_codes(dsn: str, codes: Sequence[str], urls: Sequence[str]) -> None:
    """One tracking code per URL, each with a signing secret (signatures are computed)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO tracking_codes (code, endpoint_url, signing_secret) VALUES ($1, $2, $3)",
            [(code, url, SIGNING_SECRET) for code, url in zip(codes, urls, strict=True)],
        )
    finally:
        await conn.close()


async def remove_tracking_codes(dsn: str, prefix: str) -> tuple[int, int]:
    """Drop the codes starting with ``prefix`` and whatever the schedule holds for them;
    returns how many schedule rows and codes went."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.execute(
            "DELETE FROM scheduled_deliveries WHERE starts_with(tracking_code, $1)", prefix
        )
        codes = await conn.execute("DELETE FROM tracking_codes WHERE starts_with(code, $1)", prefix)
    finally:
        await conn.close()
    return int(rows.split()[-1]), int(codes.split()[-1])


@dataclass(frozen=True, slots=True)
class Command:
    """How to start one process of a relay: ``python -m <module> <args>`` with ``env``."""

    module: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    http_port: int | None = None  # where /metrics answers, for the service


class RelayProcess:
    """One or more processes of a relay, started together; stopped with SIGTERM."""

    def __init__(self, name: str, commands: Sequence[Command], log_path: Path) -> None:
        self.name = name
        self.commands = list(commands)
        self.log_path = log_path
        self._processes: list[asyncio.subprocess.Process] = []
        self.tree = ProcessTree([])

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            for command in self.commands:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    command.module,
                    *command.args,
                    env={**os.environ, **command.env, **service_env(command.module)},
                    cwd=SERVICE_ROOT if command.module == "consumer" else ROOT,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                )
                self._processes.append(process)
        self.tree = ProcessTree(p.pid for p in self._processes)

    def check_alive(self) -> None:
        for process in self._processes:
            if process.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {process.returncode}; log {self.log_path}"
                )

    async def consumed(self, session: aiohttp.ClientSession) -> float:
        """Events consumed so far per the service's ``/metrics`` (0 when it cannot tell)."""
        total = 0.0
        for command in self.commands:
            if command.http_port is None:
                continue
            try:
                url = f"http://127.0.0.1:{command.http_port}/metrics"
                async with session.get(url) as response:
                    text = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                continue
            total += sum(float(value) for value in _CONSUMED.findall(text))
        return total

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a clean stop), SIGKILL after ``timeout``."""
        for process in self._processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()


async def processes_flag_supported() -> bool:
    """Whether ``python -m consumer run`` takes ``--processes N`` (a checkout older than the
    flag, under BENCH_SERVICE_CHECKOUT, does not)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        "--help",
        env={**os.environ, **service_env("consumer")},
        cwd=SERVICE_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return b"--processes" in out
