"""Outcome partitions are Kafka's default ones: aiokafka's own partitioner is the reference."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2

from consumer.partitioner import KeyPartitioner, murmur2


def test_murmur2_gives_aiokafkas_hash_for_keys_of_every_length_up_to_64_bytes() -> None:
    rng = random.Random(11)
    for length in range(65):
        for _ in range(50):
            key = rng.randbytes(length)
            assert murmur2(key) == reference_murmur2(key), key


def test_a_key_goes_to_the_partition_the_default_partitioner_picks() -> None:
    partitioner = KeyPartitioner()
    rng = random.Random(12)
    for count in (1, 3, 6, 12):
        partitions = list(range(count))
        for _ in range(200):
            key = str(rng.getrandbits(128)).encode()
            expected = DefaultPartitioner()(key, partitions, partitions)
            assert partitioner(key, count) == expected
            assert partitioner(key, count) == expected, "and again from the kept hash"


def test_the_kept_hashes_stay_within_their_bound() -> None:
    partitioner = KeyPartitioner(keep=10)
    for number in range(25):
        key = f"T{number}".encode()
        assert partitioner(key, 6) == DefaultPartitioner()(key, list(range(6)), [])
        assert len(partitioner._hashes) <= 10
