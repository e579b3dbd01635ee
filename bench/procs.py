"""CPU and memory of a process tree, read from ``/proc`` (Linux only).

A relay under test may be one process or a parent with worker children (``--processes N``),
so every figure is summed over the roots and all their descendants. Descendants are found
through ``/proc/<pid>/task/<tid>/children``. CPU is ``utime + stime`` of each process
itself (never ``cutime``: a child reaped by its parent would be counted twice), and the last
value seen of every process is kept, so a child that exits between two samples still counts
with what it had used when last seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory of a tree at one moment, in KiB."""

    rss_kb: int  # sum of VmRSS of the live processes
    hwm_kb: int  # sum of VmHWM (each process's own peak) of the live processes
    processes: int


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of all its threads); empty when it is gone."""
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        found.extend(int(part) for part in text.split())
    return found


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` (those still alive) and every process below them."""
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen or not (PROC / str(pid)).exists():
            continue
        seen.append(pid)
        todo.extend(children(pid))
    return seen


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from field 3 (state) on, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text.rsplit(")", 1)[1].split()


def _stat(pid: int) -> tuple[int, int] | None:
    """(start time in ticks, utime + stime in ticks) of ``pid``, or None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # Counted from 3 (state): ppid 4, utime 14, stime 15, starttime 22.
    return int(fields[19]), int(fields[11]) + int(fields[12])


def _status_kb(pid: int, names: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        if name in names:
            out[name] = int(rest.split()[0])
    return out


class ProcessTree:
    """The processes under one or more roots; ``cpu_seconds()`` only ever grows."""

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = list(roots)
        # (pid, start time) -> last utime + stime seen; the start time tells a reused pid.
        self._last: dict[tuple[int, int], int] = {}

    def pids(self) -> list[int]:
        return descendants(self.roots)

    def cpu_seconds(self) -> float:
        """CPU used so far by every process of the tree seen at this or an earlier sample."""
        for pid in self.pids():
            stat = _stat(pid)
            if stat is not None:
                self._last[(pid, stat[0])] = stat[1]
        return sum(self._last.values()) / CLOCK_TICKS

    def memory(self) -> Memory:
        rss = hwm = count = 0
        for pid in self.pids():
            values = _status_kb(pid, ("VmRSS", "VmHWM"))
            if values:
                count += 1
                rss += values.get("VmRSS", 0)
                hwm += values.get("VmHWM", 0)
        return Memory(rss_kb=rss, hwm_kb=hwm, processes=count)


def _comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else 0


def postgres_tree() -> ProcessTree:
    """Every Postgres server on the machine: each ``postgres`` process whose parent is not
    one, with its backends and workers below it."""
    roots = [
        int(entry.name)
        for entry in PROC.iterdir()
        if entry.name.isdigit()
        and _comm(int(entry.name)) == "postgres"
        and _comm(_parent(int(entry.name))) != "postgres"
    ]
    return ProcessTree(roots)
