"""Outcome and dead-letter records to Kafka (aiokafka only).

One idempotent producer with ``acks=all``: an outcome counts as published when the
broker has acknowledged it, and only then may the event's offset be committed.

Outcomes go out through aiokafka's batch API, not one ``send`` each: ``publish`` puts the
record in its partition's lane (the default partitioner's choice, by test id) and waits; a
lane's task packs everything waiting into batches and hands them to the producer, which
keeps one in flight per partition, so what arrives meanwhile makes the next batch. When a
batch is acknowledged, or fails, every record in it is told. Per record this leaves the
key's hash and one append, where ``send`` paid for two coroutines, the size estimate, the
partition lookup and a metadata object (7-8% of the service's CPU in a profile). Dead
letters, rare and possibly large, keep ``send``.

A lane that starts (the first record after its lane emptied) waits for the current
``linger_ms`` window, which the first such lane opens and every lane started within it
shares: their first batches reach the producer together and go to the broker in one
produce request, where lanes started one by one made a request each (at 500 events/s over
six partitions, 400-460 produce requests a second of about one record). Under a steady
load a lane does not empty and never waits: the batch in flight paces it.
"""

from __future__ import annotations

import asyncio
import copy
from functools import partial
from types import TracebackType
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.outcomes import OutcomeRecord
from consumer.partitioner import KeyPartitioner

# (key, value, the publisher's waiter) of one outcome in a lane
_Entry = tuple[bytes | None, bytes, "asyncio.Future[None]"]

MAX_RECORD_BYTES: Final = 16 * 1024 * 1024


class OutcomePublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        outcomes_topic: str,
        dead_letter_topic: str,
        *,
        linger_ms: int = 5,
        max_batch_size: int = 512 * 1024,
        metadata_max_age_ms: int = 300_000,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        """``producer``: one to use instead of the producer made here from the settings."""
        self.outcomes_topic = outcomes_topic
        self.dead_letter_topic = dead_letter_topic
        self._producer = producer or AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
            # An idempotent aiokafka producer keeps one batch in flight per partition and
            # makes senders wait while that batch is full; at the default 16 KiB (about 40
            # outcomes) the outcome topic capped throughput (measured with make bench).
            max_batch_size=max_batch_size,
            client_id="itep-webhooks-outcomes",
            # A dead-letter copy is as large as the event it copies: allow any record the
            # dead-letter topic takes (the service creates it with this limit).
            max_request_size=MAX_RECORD_BYTES,
            # KAFKA_METADATA_MAX_AGE: how soon partitions added to the outcome topic are used.
            metadata_max_age_ms=metadata_max_age_ms,
        )
        self._partition_of = KeyPartitioner()
        self._partitions = 0  # of the outcome topic, as the producer's metadata last said
        self._lanes: dict[int, list[_Entry]] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._unkeyed = 0
        self._linger = linger_ms / 1000
        self._window: asyncio.Future[None] | None = None  # lanes started meanwhile wait

    async def start(self) -> None:
        await self._producer.start()

    async def close(self) -> None:
        await self._producer.stop()
        for task in list(self._senders.values()):
            task.cancel()

    async def __aenter__(self) -> OutcomePublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(self, record: OutcomeRecord) -> None:
        """Publish one outcome; returns once the broker acknowledged it, raises the
        producer's ``KafkaError`` if its batch failed."""
        count = self._partitions or await self._refresh_partitions()
        key = record.key
        if key is None:
            # No test id (an event rejected before one could be read): spread them out.
            self._unkeyed += 1
            partition = self._unkeyed % count
        else:
            partition = self._partition_of(key, count)
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane = self._lanes.get(partition)
        if lane is None:
            lane = self._lanes[partition] = []
        lane.append((key, record.to_json(), acknowledged))
        if partition not in self._senders:
            self._senders[partition] = asyncio.create_task(
                self._send_lane(partition, self._current_window())
            )
        await acknowledged

    def _current_window(self) -> asyncio.Future[None] | None:
        """The window a lane starting now waits for: the open one, or a new one ending
        ``linger_ms`` from now; None without a linger."""
        if not self._linger:
            return None
        window = self._window
        if window is None or window.done():
            loop = asyncio.get_running_loop()
            window = self._window = loop.create_future()
            loop.call_later(self._linger, _close_window, window)
        return window

    async def _refresh_partitions(self) -> int:
        """The outcome topic's partition count, fetching its metadata if not known yet."""
        if not self._known_partitions():
            self._partitions = len(await self._producer.partitions_for(self.outcomes_topic))
        return self._partitions

    def _known_partitions(self) -> bool:
        """Take the partition count from the producer's metadata if it has the topic: a
        partition added to the topic is used from the next record on."""
        known = self._producer.client.cluster.partitions_for_topic(self.outcomes_topic)
        if known:
            self._partitions = len(known)
        return bool(known)

    async def _send_lane(self, partition: int, window: asyncio.Future[None] | None) -> None:
        """Batch and send what waits in ``partition``'s lane until it is empty, once
        ``window`` (shared with the lanes started with it) has closed."""
        lane = self._lanes[partition]
        entries: list[_Entry] = []
        first = 0
        try:
            if window is not None and not window.done():
                # Not awaited directly: a lane cancelled meanwhile must not cancel the
                # window of the others.
                await asyncio.wait((window,))
            while lane:
                # Take the lane whole; what arrives meanwhile waits in a new one.
                entries, lane = lane, []
                self._lanes[partition] = lane
                first = 0
                while first < len(entries):
                    batch = self._producer.create_batch()
                    end = first
                    while end < len(entries):
                        key, value, _ = entries[end]
                        # The first record always fits; past the batch size, append says no.
                        if batch.append(timestamp=None, key=key, value=value) is None:
                            break
                        end += 1
                    batch.close()  # complete: no linger, the producer may send it now
                    acked = await self._producer.send_batch(
                        batch, self.outcomes_topic, partition=partition
                    )
                    acked.add_done_callback(partial(_settle, entries[first:end]))
                    first = end
                self._known_partitions()
        except Exception as exc:  # noqa: BLE001 - each record's publisher gets it instead
            _fail(entries[first:] + lane, exc if isinstance(exc, KafkaError) else KafkaError(exc))
            lane.clear()
        except BaseException:
            _fail(entries[first:] + lane, KafkaError("the outcome publisher was stopped"))
            lane.clear()
            raise
        finally:
            del self._senders[partition]

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, error: str, source: str
    ) -> None:
        """Copy an invalid event to the dead-letter topic, bytes unchanged."""
        await self._producer.send_and_wait(
            self.dead_letter_topic,
            value=value,
            key=key,
            headers=[("error", error.encode()), ("source", source.encode())],
        )


def _close_window(window: asyncio.Future[None]) -> None:
    if not window.done():
        window.set_result(None)


def _settle(entries: list[_Entry], acked: asyncio.Future[object]) -> None:
    """Tell each record of a batch how it went."""
    if acked.cancelled():
        _fail(entries, KafkaError("the outcome batch was cancelled"))
    elif (failure := acked.exception()) is not None:
        _fail(entries, failure)
    else:
        for _, _, acknowledged in entries:
            if not acknowledged.done():
                acknowledged.set_result(None)


def _fail(entries: list[_Entry], failure: BaseException) -> None:
    for _, _, acknowledged in entries:
        if not acknowledged.done():
            # A copy each: one exception raised in many tasks would pile up tracebacks.
            acknowledged.set_exception(copy.copy(failure))
