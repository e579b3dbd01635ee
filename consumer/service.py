"""Assemble the service from one ``Settings`` and run it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import structlog
from aiokafka import AIOKafkaConsumer

from consumer.http_api import HttpApi
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.publisher import OutcomePublisher
from consumer.sender import WebhookSender
from consumer.settings import Settings
from consumer.topics import ensure_topics
from consumer.tracking_store import TrackingCodeStore

log = structlog.get_logger(__name__)


async def run_service(
    settings: Settings, stop: asyncio.Event | None = None, *, handle_signals: bool = True
) -> None:
    """Run the consumer until ``stop`` is set (SIGTERM and SIGINT set it)."""
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    log.info("service_starting", **settings.safe_summary())
    await ensure_topics(
        settings.kafka_bootstrap_servers,
        [settings.exam_events_topic, settings.outcomes_topic, settings.dead_letter_topic],
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        store = TrackingCodeStore(settings.database_url, ttl=settings.tracking_code_ttl)
        await store.start()
        stack.push_async_callback(store.close)
        sender = WebhookSender(
            connect_timeout=settings.http_connect_timeout,
            total_timeout=settings.http_total_timeout,
            max_response_bytes=settings.max_response_bytes,
            max_per_host=settings.max_in_flight_per_host,
            allow_private_endpoints=settings.allow_private_endpoints,
            max_connections=settings.max_in_flight,
        )
        await sender.start()
        stack.push_async_callback(sender.close)
        publisher = OutcomePublisher(
            settings.kafka_bootstrap_servers, settings.outcomes_topic, settings.dead_letter_topic
        )
        await publisher.start()
        stack.push_async_callback(publisher.close)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="itep-webhooks",
        )
        pipeline = Pipeline(
            settings, consumer, store=store, sender=sender, publisher=publisher, metrics=metrics
        )
        consumer.subscribe([settings.exam_events_topic], listener=pipeline.rebalance_listener())
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        api = HttpApi(settings.http_port, metrics, lambda: pipeline.ready)
        if settings.http_port:
            await api.start()
            stack.push_async_callback(api.close)
        await pipeline.run(stop)
    log.info("service_stopped")
