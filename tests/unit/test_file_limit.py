"""The descriptor limit is raised to what the settings need, never past the hard limit."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from consumer.file_limit import descriptors_needed, ensure_file_limit, raised_soft_limit


def test_the_need_counts_the_connections_in_use_and_idle_and_the_rest() -> None:
    assert descriptors_needed(1000) == 3 * 1000 + 256


def test_a_low_soft_limit_is_raised_to_the_need() -> None:
    assert raised_soft_limit(1024, 524_288, 3256) == 3256


def test_the_hard_limit_caps_the_raise() -> None:
    assert raised_soft_limit(1024, 2048, 3256) == 2048


def test_an_unlimited_hard_limit_allows_the_need() -> None:
    assert raised_soft_limit(1024, resource.RLIM_INFINITY, 3256) == 3256


def test_a_soft_limit_already_enough_is_left_alone() -> None:
    assert raised_soft_limit(65_536, 524_288, 3256) == 65_536


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_start_up_raises_this_processs_soft_limit(low_soft_limit: int) -> None:
    with capture_logs() as logs:
        ensure_file_limit(300)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == raised_soft_limit(512, low_soft_limit, descriptors_needed(300))
    assert soft > 512
    assert [entry["event"] for entry in logs] == ["file_limit_raised"]
