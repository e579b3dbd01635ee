"""The benchmark's receiver: its hook ports count and answer webhooks as a partner would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson

from bench.receiver import HookProtocol, Tally


@asynccontextmanager
async def _serve(tally: Tally, delay: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HookProtocol(tally, delay, stamps=True), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _form(label: str) -> dict[str, str]:
    return {"data": orjson.dumps({"OID": f"lat:{label}:{time.time_ns()}"}).decode()}


async def test_webhooks_on_one_kept_alive_connection_are_counted_and_answered() -> None:
    tally = Tally()
    async with _serve(tally, 0.0) as base:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(3):
                async with session.post(f"{base}/hook", data=_form("a")) as response:
                    assert (response.status, await response.text()) == (200, "ok")
    assert tally.count == 3
    assert len(tally.samples["a"]) == 3
    assert all(0 <= sample < 1000 for sample in tally.samples["a"])


async def test_a_slow_answer_is_held_for_the_delay_and_counted_as_held_meanwhile() -> None:
    tally = Tally()
    async with _serve(tally, 0.2) as base, aiohttp.ClientSession() as session:
        started = time.monotonic()
        posting = asyncio.gather(*(session.post(f"{base}/hook", data=_form("b")) for _ in range(5)))
        await asyncio.sleep(0.1)
        assert (tally.count, tally.held) == (5, 5)
        responses = await posting
        elapsed = time.monotonic() - started
        for response in responses:
            response.release()
    assert [response.status for response in responses] == [200] * 5
    assert 0.2 <= elapsed < 1.0
    assert tally.held == 0


async def test_another_path_or_method_gets_404_and_is_not_counted() -> None:
    tally = Tally()
    async with _serve(tally, 0.0) as base, aiohttp.ClientSession() as session:
        async with session.post(f"{base}/other", data=_form("c")) as response:
            assert response.status == 404
        async with session.get(f"{base}/hook") as response:
            assert response.status == 404
    assert tally.count == 0


async def test_a_request_that_is_not_http_gets_400_and_the_connection_closed() -> None:
    tally = Tally()
    async with _serve(tally, 0.0) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert tally.count == 0
