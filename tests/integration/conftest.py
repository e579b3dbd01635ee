"""Fixtures of the end-to-end tests: one test's private topics, group and database."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.harness import Stack


@pytest.fixture
async def stack(kafka_bootstrap: str, new_topic: Any, database_url: str) -> Stack:
    return Stack(
        bootstrap=kafka_bootstrap,
        database_url=database_url,
        events_topic=await new_topic(partitions=3, prefix="test-events"),
        outcomes_topic=await new_topic(partitions=3, prefix="test-outcomes"),
        dlq_topic=await new_topic(partitions=1, prefix="test-dlq"),
    )
