"""How a webhook request is written on the wire, and which headers cannot be; how the
exchanges' deadlines share timers."""

from __future__ import annotations

import asyncio
import math

import pytest

from consumer.delivery.http1 import Deadlines, encode_request

HEAD = b"POST /hook HTTP/1.1\r\nHost: h.example\r\n"


def test_request_is_head_headers_length_and_body_in_that_order() -> None:
    wire = encode_request(HEAD, {"Content-Type": "text/plain", "webhook-id": "m1"}, b"a=1")
    assert wire == (
        HEAD + b"Content-Type: text/plain\r\nwebhook-id: m1\r\nContent-Length: 3\r\n\r\na=1"
    )


def test_header_values_are_written_as_utf_8_and_may_hold_tabs() -> None:
    wire = encode_request(HEAD, {"X-Api-Key": "k\t\u00e9"}, b"")
    assert b"X-Api-Key: k\t\xc3\xa9\r\n" in wire


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\x7fb", "\x1b[0m"])
def test_a_control_character_in_a_value_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        encode_request(HEAD, {"webhook-id": value}, b"")


@pytest.mark.parametrize("name", ["X Key", "X:Key", "X\nKey", "", "Clé"])
def test_a_name_that_is_not_a_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not an HTTP token"):
        encode_request(HEAD, {name: "v"}, b"")


def test_an_empty_body_still_says_its_length() -> None:
    assert encode_request(HEAD, {}, b"").endswith(b"Content-Length: 0\r\n\r\n")


class Watched:
    """Stands in for a connection: records when it was timed out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timed_out_at: float | None = None

    def _time_out(self) -> None:
        self.timed_out_at = self.loop.time()


async def test_an_exchange_times_out_at_its_deadlines_slot_end_never_before() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=0.05)
    watched = Watched(loop)
    deadline = loop.time() + 0.12
    deadlines.add(watched, deadline)  # type: ignore[arg-type]
    await asyncio.sleep(0.25)
    assert watched.timed_out_at is not None
    # uvloop and asyncio round timers to the millisecond
    assert deadline - 0.002 <= watched.timed_out_at <= deadline + 0.05 + 0.03


async def test_deadlines_in_one_slot_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=10.0)
    base = math.floor(loop.time() / 10.0) * 10.0 + 30.0
    for offset in range(100):
        deadlines.add(Watched(loop), base + 1.0 + offset / 1000)  # type: ignore[arg-type]
    assert deadlines.timers() == 1


async def test_a_finished_exchange_is_not_timed_out() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=0.01)
    done, pending = Watched(loop), Watched(loop)
    slot = deadlines.add(done, loop.time() + 0.02)  # type: ignore[arg-type]
    deadlines.add(pending, loop.time() + 0.02)  # type: ignore[arg-type]
    deadlines.remove(done, slot)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert done.timed_out_at is None
    assert pending.timed_out_at is not None
