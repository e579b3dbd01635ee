"""Enough file descriptors for the sockets the settings allow.

The sender may hold ``MAX_IN_FLIGHT`` connections in use and twice that idle, beside the
Kafka and Postgres clients and the HTTP server. A common default soft limit is 1,024, which
1,000 webhooks in flight would pass, each failure then reported as a connection error. At
start-up the soft limit is raised towards what is needed, up to the hard limit (no
privilege needed); if the hard limit is lower, a warning says so.
"""

from __future__ import annotations

import resource
from typing import Final

import structlog

from consumer.delivery.sender import IDLE_PER_CONNECTION

log = structlog.get_logger(__name__)

# Kafka and Postgres connections, the HTTP server and its clients, files, and room to spare.
OTHER_DESCRIPTORS: Final = 256


def descriptors_needed(max_in_flight: int) -> int:
    return (1 + IDLE_PER_CONNECTION) * max_in_flight + OTHER_DESCRIPTORS


def raised_soft_limit(soft: int, hard: int, needed: int) -> int:
    """The soft limit to set: ``needed`` if above ``soft``, at most ``hard``."""
    if hard != resource.RLIM_INFINITY:
        needed = min(needed, hard)
    return max(soft, needed)


def ensure_file_limit(max_in_flight: int) -> None:
    needed = descriptors_needed(max_in_flight)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = raised_soft_limit(soft, hard, needed)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("file_limit_raised", soft_limit=target, was=soft)
    if target < needed:
        log.warning(
            "file_limit_low",
            soft_limit=target,
            hard_limit=hard,
            needed=needed,
            hint="raise the hard RLIMIT_NOFILE (ulimit -Hn, LimitNOFILE=) or lower MAX_IN_FLIGHT",
        )
