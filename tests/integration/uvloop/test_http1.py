"""The sender's HTTP/1.1 connections against a raw loopback server that answers byte for byte.

On uvloop, as in the service; ``tests/integration/test_sender.py`` runs the same sender on
asyncio's loop.

aiohttp's server always answers well; this one answers as partners' servers sometimes do:
chunked, closing, interim 1xx, cut off, stalled, malformed, oversized, over TLS.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from structlog.testing import capture_logs

from consumer.delivery.connections import Origin
from consumer.delivery.http1 import Http1Connection
from consumer.delivery.sender import WebhookSender
from consumer.delivery.webhook import WebhookRequest

pytestmark = pytest.mark.integration

# Writes the answer to request ``number`` (1-based); returns False to close the connection.
Script = Callable[[asyncio.StreamWriter, int], Awaitable[bool]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answer(raw: bytes, keep: bool = True) -> Script:
    async def script(writer: asyncio.StreamWriter, number: int) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return script


@dataclass
class RawServer:
    """Reads each request (head and Content-Length body) and lets ``script`` answer."""

    script: Script = field(default_factory=lambda: answer(OK))
    connections: int = 0
    closed_by_client: int = 0
    requests: list[bytes] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{port}/hook"

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                if not await self.script(writer, len(self.requests)):
                    break
        except asyncio.IncompleteReadError as exc:
            self.closed_by_client += not exc.partial
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    async with WebhookSender(
        allow_private_endpoints=True, connect_timeout=1.0, total_timeout=1.0
    ) as started:
        yield started


def request_to(url: str, body: bytes = b"data=%7B%7D") -> WebhookRequest:
    return WebhookRequest(
        url=url,
        headers={"Content-Type": "application/x-www-form-urlencoded", "webhook-id": "msg_1"},
        body=body,
        endpoint_host="127.0.0.1",
        webhook_id="msg_1",
        timestamp=0,
    )


def log_events(logs: list[dict[str, Any]], prefix: str = "webhook_") -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"].startswith(prefix)]


async def test_the_request_goes_out_as_http_1_1_with_host_and_length(
    raw: RawServer, sender: WebhookSender
) -> None:
    result = await sender.send(request_to(raw.url + "?a=b%2Bc", b"data=x"))
    assert (result.status, result.error) == (200, None)
    head, body = raw.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    port = raw.url.split(":")[2].split("/")[0]
    assert lines[0] == b"POST /hook?a=b%2Bc HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in lines
    assert b"Content-Length: 6" in lines
    assert body == b"data=x"


async def test_sequential_requests_share_one_connection(
    raw: RawServer, sender: WebhookSender
) -> None:
    results = [await sender.send(request_to(raw.url)) for _ in range(5)]
    assert [result.status for result in results] == [200] * 5
    assert raw.connections == 1


async def test_a_response_asking_to_close_is_not_reused(
    raw: RawServer, sender: WebhookSender
) -> None:
    raw.script = answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    results = [await sender.send(request_to(raw.url)) for _ in range(3)]
    assert [result.status for result in results] == [200] * 3
    assert raw.connections == 3


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    raw: RawServer, sender: WebhookSender
) -> None:
    raw.script = answer(OK, keep=False)  # closes without saying so
    first = await sender.send(request_to(raw.url))
    await asyncio.sleep(0.1)  # the close reaches the client
    second = await sender.send(request_to(raw.url))
    assert (first.status, second.status) == (200, 200)
    assert raw.connections == 2


@dataclass
class Silent:
    """A script: answers OK, but reads the requests numbered in ``on`` and closes without a
    word, as a server whose idle timeout wins the race with the client's reuse does."""

    on: set[int]
    answered: list[int] = field(default_factory=list)

    async def __call__(self, writer: asyncio.StreamWriter, number: int) -> bool:
        if number in self.on:
            return False
        self.answered.append(number)
        writer.write(OK)
        await writer.drain()
        return True


async def test_a_kept_alive_connection_closed_as_it_is_reused_is_tried_once_on_a_new_one(
    raw: RawServer, sender: WebhookSender
) -> None:
    raw.script = script = Silent(on={2})
    first = await sender.send(request_to(raw.url))
    second = await sender.send(request_to(raw.url))
    assert (first.status, second.status) == (200, 200)
    assert (len(raw.requests), raw.connections, len(script.answered)) == (3, 2, 2)


async def test_the_new_connection_is_tried_only_once(raw: RawServer, sender: WebhookSender) -> None:
    raw.script = Silent(on={2, 3})
    first = await sender.send(request_to(raw.url))
    second = await sender.send(request_to(raw.url))
    assert (first.status, second.error) == (200, "connection_error")
    assert (len(raw.requests), raw.connections) == (3, 2)


async def test_the_new_connection_is_made_within_the_same_total_timeout(
    raw: RawServer, sender: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect slower than what is left of ``total_timeout`` (1 s here) ends at it."""
    raw.script = Silent(on={2})
    pool = sender._pool
    assert pool is not None
    acquire = pool.acquire

    async def slow_when_fresh(origin: Origin, *, fresh: bool = False) -> Http1Connection:
        if fresh:
            await asyncio.sleep(2.0)
        return await acquire(origin, fresh=fresh)

    monkeypatch.setattr(pool, "acquire", slow_when_fresh)
    await sender.send(request_to(raw.url))
    loop = asyncio.get_running_loop()
    started = loop.time()
    second = await sender.send(request_to(raw.url))
    assert second.error == "timeout"
    assert loop.time() - started < 1.5


async def test_a_connection_cut_mid_answer_is_not_tried_again(
    raw: RawServer, sender: WebhookSender
) -> None:
    async def cut_the_second(writer: asyncio.StreamWriter, number: int) -> bool:
        writer.write(OK if number == 1 else b"HTTP/1.1 20")
        await writer.drain()
        return number == 1

    raw.script = cut_the_second
    await sender.send(request_to(raw.url))
    second = await sender.send(request_to(raw.url))
    assert second.error == "connection_error"
    assert len(raw.requests) == 2, "part of an answer arrived: the request may have been handled"


async def test_past_max_idle_the_connection_idle_longest_is_closed_not_the_one_just_used(
    raw: RawServer,
) -> None:
    others = [RawServer(), RawServer()]
    for other in others:
        await other.start()
    try:
        # One connection in use at most, so two kept idle.
        async with WebhookSender(allow_private_endpoints=True, max_connections=1) as sender:
            for server in (raw, *others, others[0]):
                assert (await sender.send(request_to(server.url))).status == 200
            async with asyncio.timeout(2):
                while raw.closed_by_client == 0:
                    await asyncio.sleep(0.01)
    finally:
        for other in others:
            await other.stop()
    assert others[0].connections == 1, "an origin in use kept its connection and reused it"
    assert (raw.connections, raw.closed_by_client) == (1, 1), "the oldest idle one was closed"


async def test_a_chunked_response_is_read_whole_and_the_connection_reused(
    raw: RawServer, sender: WebhookSender
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"
    )
    raw.script = answer(chunked)
    with capture_logs() as logs:
        results = [await sender.send(request_to(raw.url)) for _ in range(2)]
    assert [result.status for result in results] == [200, 200]
    assert raw.connections == 1
    assert log_events(logs) == []


async def test_a_body_running_to_the_close_is_complete(
    raw: RawServer, sender: WebhookSender
) -> None:
    raw.script = answer(b"HTTP/1.0 202 Accepted\r\n\r\nqueued", keep=False)
    with capture_logs() as logs:
        result = await sender.send(request_to(raw.url))
    assert (result.status, result.error) == (202, None)
    assert log_events(logs) == []


async def test_an_interim_response_is_skipped_for_the_final_one(
    raw: RawServer, sender: WebhookSender
) -> None:
    raw.script = answer(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)
    result = await sender.send(request_to(raw.url))
    assert (result.status, result.error) == (200, None)


async def test_retry_after_is_read_whatever_its_case(raw: RawServer, sender: WebhookSender) -> None:
    raw.script = answer(b"HTTP/1.1 429 Too Many\r\nretry-AFTER: 7\r\nContent-Length: 0\r\n\r\n")
    result = await sender.send(request_to(raw.url))
    assert (result.status, result.retry_after) == (429, "7")


async def test_a_body_cut_off_keeps_the_status(raw: RawServer, sender: WebhookSender) -> None:
    raw.script = answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\nonly ten b", keep=False)
    with capture_logs() as logs:
        result = await sender.send(request_to(raw.url))
    assert (result.status, result.error) == (500, None)
    [unread] = log_events(logs, "webhook_response_unread")
    assert (unread["read_bytes"], unread["error_type"]) == (10, "ServerDisconnected")


async def test_a_body_that_stalls_keeps_the_status_and_ends_at_the_timeout(
    raw: RawServer, sender: WebhookSender
) -> None:
    stalled = asyncio.Event()

    async def stall(writer: asyncio.StreamWriter, number: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        await stalled.wait()
        return False

    raw.script = stall
    try:
        with capture_logs() as logs:
            result = await sender.send(request_to(raw.url))
    finally:
        stalled.set()
    assert (result.status, result.error) == (200, None)
    assert 900 <= result.latency_ms < 3000
    [unread] = log_events(logs, "webhook_response_unread")
    assert (unread["read_bytes"], unread["error_type"]) == (3, "TimeoutError")


@pytest.mark.parametrize(
    "reply",
    [b"", b"hello there\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n"],
    ids=["closed without a word", "not HTTP", "head over 64 KiB"],
)
async def test_no_status_is_a_connection_error(
    raw: RawServer, sender: WebhookSender, reply: bytes
) -> None:
    raw.script = answer(reply, keep=False)
    with capture_logs() as logs:
        result = await sender.send(request_to(raw.url))
    assert (result.status, result.error) == (None, "connection_error")
    assert [entry["event"] for entry in log_events(logs)] == ["webhook_connection_failed"]
    assert len(raw.requests) == 1, "a new connection that fails is not tried again"


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1", "127.000.0.1"])
async def test_numeric_hosts_that_hide_an_address_are_invalid_urls(
    sender: WebhookSender, host: str
) -> None:
    result = await sender.send(request_to(f"http://{host}:9/hook"))
    assert (result.status, result.error) == (None, "invalid_url")


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/hook", "http:///hook", "http://user:pw@127.0.0.1:9/hook"]
)
async def test_urls_that_cannot_be_posted_to_are_invalid(sender: WebhookSender, url: str) -> None:
    result = await sender.send(request_to(url))
    assert (result.status, result.error) == (None, "invalid_url")


async def test_a_response_nobody_asked_for_closes_the_idle_connection(
    raw: RawServer, sender: WebhookSender
) -> None:
    async def answer_twice(writer: asyncio.StreamWriter, number: int) -> bool:
        writer.write(OK + OK)
        await writer.drain()
        return True

    raw.script = answer_twice
    first = await sender.send(request_to(raw.url))
    await asyncio.sleep(0.05)
    second = await sender.send(request_to(raw.url))
    assert (first.status, second.status) == (200, 200)
    assert raw.connections == 2, "the second answer on the first connection was not trusted"


# TLS: a CA and a certificate for localhost and 127.0.0.1 made with the openssl tool.


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.skip("the openssl tool is not installed")
    directory = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run([tool, *args], cwd=directory, check=True, capture_output=True)  # noqa: S603

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "leaf.key", "-out", "leaf.csr",
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "leaf.pem",
    )  # fmt: skip
    return Certificates(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key")


@pytest.fixture
async def tls_server(certificates: Certificates) -> AsyncIterator[RawServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    server = RawServer()
    await server.start(tls=context, host="localhost")
    try:
        yield server
    finally:
        await server.stop()


async def test_https_is_delivered_to_a_certificate_the_system_trusts(
    tls_server: RawServer, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
    async with WebhookSender(allow_private_endpoints=True, total_timeout=5.0) as sender:
        results = [await sender.send(request_to(tls_server.url, b"data=tls")) for _ in range(2)]
    assert [(result.status, result.error) for result in results] == [(200, None)] * 2
    assert tls_server.requests[0].endswith(b"\r\n\r\ndata=tls")
    assert tls_server.connections == 1


async def test_https_to_an_untrusted_certificate_is_a_connection_error(
    tls_server: RawServer,
) -> None:
    async with WebhookSender(allow_private_endpoints=True, total_timeout=5.0) as sender:
        with capture_logs() as logs:
            result = await sender.send(request_to(tls_server.url))
    assert (result.status, result.error) == (None, "connection_error")
    [failed] = log_events(logs)
    assert failed["error_type"] == "SSLCertVerificationError"
    assert tls_server.requests == []


async def test_these_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
