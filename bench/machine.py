"""The machine and the versions a run measured, for the report's header."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import asyncpg

from bench.stack import ROOT

PACKAGES = ("aiohttp", "aiokafka", "uvloop", "orjson", "asyncpg", "faststream")


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    system: str
    versions: dict[str, str]

    def describe(self) -> str:
        return f"{self.cpu}, {self.cores} cores, {self.memory_gib:.1f} GiB RAM, {self.system}"

    def describe_versions(self) -> str:
        return ", ".join(f"{name} {version}" for name, version in self.versions.items())


def _first(path: Path, key: str) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, sep, value = line.partition(":" if path.name != "os-release" else "=")
        if sep and name.strip() == key:
            return value.strip().strip('"')
    return None


def kafka_version() -> str:
    """The local broker's version: ``.local/kafka/kafka.version``, else its jar's name."""
    local = ROOT / ".local" / "kafka"
    try:
        return (local / "kafka.version").read_text().strip()
    except OSError:
        pass
    jars = sorted((local / "libs").glob("kafka_2.13-*.jar"))
    if jars:
        return jars[0].stem.removeprefix("kafka_2.13-")
    return "unknown (not the local stack's broker)"


async def postgres_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version")).split(" ")[0]
    finally:
        await conn.close()


async def describe_machine(dsn: str) -> Machine:
    memory_kb = _first(Path("/proc/meminfo"), "MemTotal") or "0 kB"
    versions = {
        "Python": platform.python_version(),
        "Kafka": kafka_version(),
        "Postgres": await postgres_version(dsn),
    }
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return Machine(
        cpu=_first(Path("/proc/cpuinfo"), "model name") or platform.machine(),
        cores=os.cpu_count() or 0,
        memory_gib=int(memory_kb.split()[0]) / (1 << 20),
        system=_first(Path("/etc/os-release"), "PRETTY_NAME") or platform.platform(),
        versions=versions,
    )
