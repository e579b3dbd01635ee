"""The machine's busy cores over a bench window, from ``/proc/stat``."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from bench.window import busy_cores, machine_ticks


def _stat(tmp_path: Path, user: int, idle: int, iowait: int) -> str:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    path = tmp_path / "stat"
    path.write_text(f"cpu  {user} 0 10 {idle} {iowait} 0 0 0 5 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    return str(path)


def test_idle_and_iowait_are_the_idle_ticks_and_guest_is_not_counted_twice(
    tmp_path: Path,
) -> None:
    assert machine_ticks(_stat(tmp_path, user=100, idle=300, iowait=20)) == (110, 430)


def test_busy_cores_scales_the_busy_share_by_the_core_count() -> None:
    assert busy_cores((100, 1000), (250, 1200), cores=2) == 1.5


def test_busy_cores_of_an_empty_interval_is_not_a_number() -> None:
    assert math.isnan(busy_cores((100, 1000), (100, 1000), cores=2))


def test_a_spinning_process_reads_as_busy_and_within_the_machine_s_cores() -> None:
    start = machine_ticks()
    until = time.monotonic() + 0.2  # 20 clock ticks at 100 Hz
    while time.monotonic() < until:
        pass
    busy = busy_cores(start, machine_ticks())
    assert 0.0 < busy <= (os.cpu_count() or 1)
