"""The benchmark's event mix: which test, code and partition event i has."""

from __future__ import annotations

from collections import Counter

import orjson

from bench.events import EventMix
from bench.stack import PARTITIONS


def test_every_partition_carries_every_code_evenly() -> None:
    codes = [f"C{n:02d}" for n in range(20)]
    encode = EventMix(run="t", codes=codes, tests=20_000).encoder()
    per_partition: dict[int, Counter[str]] = {}
    for i in range(20_000):
        _, value, partition = encode(i, "crm")
        code = orjson.loads(value)["tracking_code"]
        per_partition.setdefault(partition, Counter())[code] += 1
    assert sorted(per_partition) == list(range(PARTITIONS))
    for counts in per_partition.values():
        assert set(counts) == set(codes)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_a_test_keeps_its_key_partition_and_code() -> None:
    encode = EventMix(run="t", codes=["A", "B", "C"], tests=50).encoder()
    seen: dict[bytes, tuple[int, str]] = {}
    for i in range(500):
        key, value, partition = encode(i, "crm")
        where = (partition, orjson.loads(value)["tracking_code"])
        assert seen.setdefault(key, where) == where
    assert len(seen) == 50
