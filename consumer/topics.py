"""Create or check the service's topics at start-up (aiokafka admin only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.errors import TopicError

log = structlog.get_logger(__name__)

TOPIC_ALREADY_EXISTS: Final = 36


async def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (with ``configs[name]`` as their topic
    configuration); return the names created."""
    configs = configs or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="itep-webhooks")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    partitions,
                    replication_factor,
                    topic_configs=dict(configs.get(name, {})),
                )
                for name in missing
            ]
        )
        created = []
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                created.append(topic)
                log.info("topic_created", topic=topic, partitions=partitions)
            elif code != TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest else ""
                raise TopicError(f"topic {topic}: error code {code} {message}".strip())
        return created
    finally:
        await admin.close()
