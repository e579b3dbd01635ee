"""Create or check the service's topics at start-up (aiokafka admin only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.errors import ConfigError, TopicError

log = structlog.get_logger(__name__)

TOPIC_ALREADY_EXISTS: Final = 36
# A write acknowledged with acks=all is on at least this many replicas (fewer when the topic
# has fewer).
MIN_INSYNC_REPLICAS: Final = 2


def creation_configs(
    names: Iterable[str], replication_factor: int, configs: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """The topic configuration each of ``names`` is created with: ``min.insync.replicas`` =
    min(2, ``replication_factor``), then ``configs[name]`` (which may set it otherwise).

    Set on the topic rather than left to the broker default: a broker default of 2 would
    make a one-replica topic refuse every acks=all write, and a default of 1 would let a
    three-replica topic acknowledge writes held by one broker only.
    """
    base = {"min.insync.replicas": str(min(MIN_INSYNC_REPLICAS, replication_factor))}
    return {name: {**base, **configs.get(name, {})} for name in names}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


async def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (see ``creation_configs`` for their topic
    configuration); return the names created.

    ``replication_factor`` is TOPIC_REPLICATION_FACTOR: when a topic must be created and the
    cluster lists fewer brokers, ``ConfigError`` names it. An existing topic with fewer
    replicas is left as it is and logged (``topic_replication_factor_low``).
    """
    configs = configs or {}
    wanted = list(dict.fromkeys(names))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="itep-webhooks")
    await admin.start()
    try:
        # Every topic, as list_topics reads them (naming topics instead would let a broker
        # with auto.create.topics.enable create them).
        existing = {topic["topic"]: topic for topic in await admin.describe_topics()}
        missing = [name for name in wanted if name not in existing]
        _warn_low_replication(
            [existing[name] for name in wanted if name in existing], replication_factor
        )
        if not missing:
            return []
        brokers = len((await admin.describe_cluster())["brokers"])
        if replication_factor > brokers:
            raise ConfigError(
                "TOPIC_REPLICATION_FACTOR",
                f"{_plural(replication_factor, 'replica')} of each partition need as many "
                f"brokers; the cluster at {bootstrap_servers} has {_plural(brokers, 'broker')}",
            )
        topic_configs = creation_configs(missing, replication_factor, configs)
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor, topic_configs=topic_configs[name])
                for name in missing
            ]
        )
        created = []
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                created.append(topic)
                log.info(
                    "topic_created",
                    topic=topic,
                    partitions=partitions,
                    replication_factor=replication_factor,
                )
            elif code != TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest else ""
                raise TopicError(f"topic {topic}: error code {code} {message}".strip())
        return created
    finally:
        await admin.close()


def _warn_low_replication(described: list[dict[str, Any]], replication_factor: int) -> None:
    for topic in described:
        factors = [len(p["replicas"]) for p in topic["partitions"]]
        if factors and min(factors) < replication_factor:
            log.warning(
                "topic_replication_factor_low",
                topic=topic["topic"],
                replication_factor=min(factors),
                wanted=replication_factor,
            )
