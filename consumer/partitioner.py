"""Kafka's default partition for a keyed record: murmur2 of the key, as the Java client and
aiokafka's ``DefaultPartitioner`` compute it, so that an outcome lands where any producer
would put its test id.

``murmur2`` reads the key four bytes at a time with one ``struct`` call instead of byte by
byte, and ``KeyPartitioner`` keeps the hashes of recent keys (a test id's events come
close together); both give aiokafka's answers, which a test checks.
"""

from __future__ import annotations

import struct
from typing import Final

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF
_WORDS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` (org.apache.kafka.common.utils.Utils.murmur2)."""
    length = len(data)
    h = _SEED ^ length
    words = length >> 2
    unpack = _WORDS.get(words)
    if unpack is None:
        unpack = _WORDS[words] = struct.Struct(f"<{words}I")
    m = _M
    for word in unpack.unpack_from(data):
        k = (word * m) & _MASK
        k ^= k >> 24
        h = ((h * m) & _MASK) ^ ((k * m) & _MASK)
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * m) & _MASK
    h ^= h >> 13
    h = (h * m) & _MASK
    return h ^ (h >> 15)


class KeyPartitioner:
    """The partition of a key among ``count``; up to ``keep`` keys' hashes remembered."""

    def __init__(self, keep: int = 65_536) -> None:
        self._keep = keep
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes, count: int) -> int:
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._keep:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return hashed % count
