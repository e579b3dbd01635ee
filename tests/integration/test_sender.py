"""WebhookSender against real HTTP receivers on loopback: aiohttp's in-process one and PHP's."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from consumer.delivery.sender import WebhookSender
from consumer.delivery.webhook import (
    FORM_CONTENT_TYPE,
    USER_AGENT,
    WebhookRequest,
    build_body,
    build_request,
)
from consumer.events import ExamEvent, parse_event
from consumer.payload import encode_data
from consumer.tracking_codes import AuthMethod, TrackingCode
from tests.factories import event_dict
from tests.receiver import Receiver
from tests.signatures import assert_verifies

pytestmark = pytest.mark.integration

ROUTER = Path(__file__).parent / "php" / "router.php"
SECRET = "whsec_" + base64.b64encode(b"integration-signing-key-32-bytes").decode()
TRICKY = 'a+b&c=d%20e f=g%%+ é 中文 😀 "q" \\ / \' <x> #h ?q ;s'
TRICKY_URL = "https://results.example.org/r/50613490BP?sig=a+b&x=1%2B2&y=é"

SenderFactory = Callable[..., Awaitable[WebhookSender]]


def make_event(event_id: str = "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f") -> ExamEvent:
    """The contract's example with form specials and non-ASCII in every text it carries."""
    doc = event_dict(event_id=event_id, oid=TRICKY)
    doc["results"]["score_report_url"] = TRICKY_URL
    doc["results"]["overall"]["cefr"] = "B2+ (très bien) 中"
    doc["results"]["sections"]["writing"]["cefr"] = "B1&B2=ok"
    return parse_event(orjson.dumps(doc))


def make_request(url: str, event: ExamEvent | None = None, **code_fields: Any) -> WebhookRequest:
    event = event or make_event()
    code = TrackingCode(code="ACME-UNI", endpoint_url=url, **code_fields)
    return build_request(event, code, build_body(event, code), int(time.time()))


def lower_keys(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def make_sender() -> AsyncIterator[SenderFactory]:
    """Started senders (private endpoints allowed unless asked otherwise), closed afterwards."""
    senders: list[WebhookSender] = []

    async def make(**options: Any) -> WebhookSender:
        options.setdefault("allow_private_endpoints", True)
        sender = WebhookSender(**options)
        await sender.start()
        senders.append(sender)
        return sender

    try:
        yield make
    finally:
        for sender in senders:
            await sender.close()


@pytest.fixture
async def gate(receiver: Receiver) -> AsyncIterator[asyncio.Event]:
    """An event a blocking responder waits on; set at teardown so the receiver can stop."""
    event = asyncio.Event()
    try:
        yield event
    finally:
        event.set()


async def test_body_arrives_byte_for_byte_and_data_parses_back(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = await make_sender()
    extra = {"partner": "ACME & Sons + Co = 100%", "city": "Zürich 北京 🚀"}
    request = make_request(receiver.url, extra_fields=extra)

    result = await sender.send(request)

    assert (result.status, result.error) == (200, None)
    [got] = receiver.requests
    assert got.method == "POST"
    assert got.body == request.body
    form = parse_qs(got.body.decode("ascii"), strict_parsing=True, keep_blank_values=True)
    assert form["data"] == [encode_data(make_event())]
    data = orjson.loads(form["data"][0])
    assert data["OID"] == TRICKY
    assert data["score_report_url"] == TRICKY_URL
    assert data["Writing_cefr"] == "B1&B2=ok"
    assert form["partner"] == [extra["partner"]]
    assert form["city"] == [extra["city"]]


async def test_headers_arrive_exactly_as_built(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = await make_sender()
    request = make_request(receiver.url)

    await sender.send(request)

    headers = lower_keys(receiver.requests[0].headers)
    assert headers["content-type"] == FORM_CONTENT_TYPE
    assert headers["user-agent"] == USER_AGENT
    assert headers["webhook-id"] == "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f"
    assert headers["webhook-timestamp"] == str(request.timestamp)
    assert headers["content-length"] == str(len(request.body))


HEADER_AUTH = {
    "basic": (
        AuthMethod.BASIC,
        {"username": "acme", "password": "p@ss w:rd é"},
        ("authorization", "Basic " + base64.b64encode("acme:p@ss w:rd é".encode()).decode()),
    ),
    "bearer": (AuthMethod.BEARER, {"token": "tok-1.a"}, ("authorization", "Bearer tok-1.a")),
    "header": (AuthMethod.HEADER, {"name": "X-Api-Key", "value": "k-1 2"}, ("x-api-key", "k-1 2")),
}


@pytest.mark.parametrize("method", HEADER_AUTH)
async def test_header_auth_arrives_on_the_wire(
    receiver: Receiver, make_sender: SenderFactory, method: str
) -> None:
    auth_method, params, (header, expected) = HEADER_AUTH[method]
    sender = await make_sender()
    await sender.send(make_request(receiver.url, auth_method=auth_method, auth_params=params))
    assert lower_keys(receiver.requests[0].headers)[header] == expected


async def test_query_auth_arrives_beside_the_endpoints_own_query(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = await make_sender()
    params = {"params": {"key": "s3cr+t&=% é", "v": "2"}}
    url = receiver.url + "?src=itep&x=a%2Bb"
    await sender.send(make_request(url, auth_method=AuthMethod.QUERY, auth_params=params))
    [got] = receiver.requests
    assert got.path == "/hook"
    assert got.query == {"src": ["itep"], "x": ["a+b"], "key": ["s3cr+t&=% é"], "v": ["2"]}
    assert "authorization" not in lower_keys(got.headers)


async def test_signature_verifies_on_what_the_receiver_got(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = await make_sender()
    await sender.send(make_request(receiver.url, signing_secret=SECRET))
    [got] = receiver.requests
    assert_verifies(SECRET, got.body, got.headers)


async def test_a_request_built_earlier_goes_out_with_the_time_of_sending(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    """A request that waited (for a slot, say) is stamped and signed when it is sent, so the
    receiver's five-minute timestamp check passes."""
    sender = await make_sender()
    event = make_event()
    code = TrackingCode(code="ACME-UNI", endpoint_url=receiver.url, signing_secret=SECRET)
    hour_ago = int(time.time()) - 3600
    await sender.send(build_request(event, code, build_body(event, code), hour_ago))
    [got] = receiver.requests
    assert int(got.headers["webhook-timestamp"]) >= hour_ago + 3600
    assert_verifies(SECRET, got.body, got.headers)


async def test_redirect_is_not_followed(receiver: Receiver, make_sender: SenderFactory) -> None:
    async def redirect(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    receiver.respond = redirect
    sender = await make_sender()

    result = await sender.send(make_request(receiver.url))

    assert (result.status, result.error) == (302, None)
    assert [got.path for got in receiver.requests] == ["/hook"]


async def test_503_reports_its_retry_after(receiver: Receiver, make_sender: SenderFactory) -> None:
    async def unavailable(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=503, text="busy", headers={"Retry-After": "120"})

    receiver.respond = unavailable
    sender = await make_sender()

    result = await sender.send(make_request(receiver.url))

    assert (result.status, result.error, result.retry_after) == (503, None, "120")


async def test_slow_receiver_times_out_within_the_total_timeout(
    receiver: Receiver, make_sender: SenderFactory, gate: asyncio.Event
) -> None:
    async def stall(request: web.Request, number: int) -> web.StreamResponse:
        await gate.wait()
        return web.Response(text="late")

    receiver.respond = stall
    sender = await make_sender(connect_timeout=0.3, total_timeout=0.3)

    result = await sender.send(make_request(receiver.url))

    assert (result.status, result.error) == (None, "timeout")
    assert 250 <= result.latency_ms < 2000
    assert len(receiver.requests) == 1


async def test_closed_port_is_a_connection_error(make_sender: SenderFactory) -> None:
    sender = await make_sender(connect_timeout=2.0, total_timeout=2.0)
    result = await sender.send(make_request(f"http://127.0.0.1:{closed_port()}/hook"))
    assert (result.status, result.error) == (None, "connection_error")


async def test_huge_response_is_read_only_up_to_the_cap(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    async def huge(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(body=b"x" * (5 * 1024 * 1024))

    receiver.respond = huge
    sender = await make_sender(max_response_bytes=65536)

    with capture_logs() as logs:
        result = await sender.send(make_request(receiver.url))

    assert (result.status, result.error) == (200, None)
    truncated = [entry for entry in logs if entry["event"] == "webhook_response_truncated"]
    assert [entry["read_bytes"] for entry in truncated] == [65536]


async def test_small_response_is_read_whole_without_truncation(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = await make_sender(max_response_bytes=65536)
    with capture_logs() as logs:
        first = await sender.send(make_request(receiver.url))
        second = await sender.send(make_request(receiver.url))
    assert (first.status, second.status) == (200, 200)
    assert not [entry for entry in logs if entry["event"].startswith("webhook_response_")]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "127.1", "0x7f.0.0.1"],
)
async def test_loopback_target_is_blocked_unless_private_endpoints_are_allowed(
    receiver: Receiver, make_sender: SenderFactory, host: str
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    sender = await make_sender(allow_private_endpoints=False)

    result = await sender.send(make_request(f"http://{host}:{port}/hook"))

    assert (result.status, result.error) == (None, "endpoint_blocked")
    assert receiver.requests == []


async def test_localhost_is_delivered_when_private_endpoints_are_allowed(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    sender = await make_sender(allow_private_endpoints=True)
    result = await sender.send(make_request(f"http://localhost:{port}/hook"))
    assert (result.status, result.error) == (200, None)


async def test_per_origin_limit_holds_requests_back_while_others_go_through(
    receiver: Receiver, make_sender: SenderFactory, gate: asyncio.Event
) -> None:
    inside = 0
    peak = 0

    async def hold_slow(request: web.Request, number: int) -> web.StreamResponse:
        nonlocal inside, peak
        if request.path != "/slow":
            return web.Response(text="ok")
        inside += 1
        peak = max(peak, inside)
        try:
            await gate.wait()
        finally:
            inside -= 1
        return web.Response(text="ok")

    receiver.respond = hold_slow
    sender = await make_sender(max_per_host=2)
    slow_url = receiver.url.removesuffix("/hook") + "/slow"
    port = receiver.url.split(":")[2].split("/")[0]

    sends = [asyncio.create_task(sender.send(make_request(slow_url))) for _ in range(6)]
    await receiver.wait_for(2)
    assert sender.in_flight_for(slow_url) == 2
    assert sender.queued_for(slow_url) == 4
    with pytest.raises(TimeoutError):
        await receiver.wait_for(3, timeout=0.3)

    other = await sender.send(make_request(f"http://localhost:{port}/hook"))
    assert other.status == 200, "another origin is not held back by the slow one"

    gate.set()
    results = await asyncio.gather(*sends)
    assert [result.status for result in results] == [200] * 6
    assert peak == 2
    assert sender.in_flight_for(slow_url) == 0


async def test_waiting_for_a_host_slot_does_not_use_up_the_timeout(
    receiver: Receiver, make_sender: SenderFactory, gate: asyncio.Event
) -> None:
    async def stall_first(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:
            await gate.wait()
        return web.Response(text="ok")

    receiver.respond = stall_first
    sender = await make_sender(max_per_host=1, connect_timeout=0.3, total_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()

    first = asyncio.create_task(sender.send(make_request(receiver.url)))
    await receiver.wait_for(1)
    second = await sender.send(make_request(receiver.url))
    waited = loop.time() - started

    assert (await first).error == "timeout"
    assert (second.status, second.error) == (200, None)
    assert waited >= 0.3, "the second request queued behind the first"
    assert second.latency_ms < 300


@pytest.mark.parametrize("url", ["http://[::1/hook", "http://127.1:9/hook"])
async def test_malformed_url_is_reported_not_raised(make_sender: SenderFactory, url: str) -> None:
    sender = await make_sender(allow_private_endpoints=True)
    request = WebhookRequest(
        url=url, headers={}, body=b"data=%7B%7D", endpoint_host="::1", webhook_id="w", timestamp=0
    )
    result = await sender.send(request)
    assert (result.status, result.error) == (None, "invalid_url")


async def test_header_with_a_control_character_fails_as_invalid_request(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    """A header that cannot be written is a permanent failure, not a crash; nothing is sent."""
    sender = await make_sender(allow_private_endpoints=True)
    request = WebhookRequest(
        url=receiver.url,
        headers={"webhook-id": "a\nb"},
        body=b"data=%7B%7D",
        endpoint_host="127.0.0.1",
        webhook_id="a\nb",
        timestamp=0,
    )
    result = await sender.send(request)
    assert (result.status, result.error) == (None, "invalid_request")
    assert receiver.requests == []


async def test_send_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        await WebhookSender().send(make_request("http://127.0.0.1:9/hook"))


async def test_sender_works_as_an_async_context_manager(receiver: Receiver) -> None:
    async with WebhookSender(allow_private_endpoints=True) as sender:
        result = await sender.send(make_request(receiver.url))
    assert result.status == 200


@dataclass
class PhpReceiver:
    url: str
    capture: Path

    def data_for(self, event_id: str) -> bytes:
        return (self.capture / f"{event_id}.data").read_bytes()

    def record_for(self, event_id: str) -> dict[str, Any]:
        record: dict[str, Any] = orjson.loads((self.capture / f"{event_id}.json").read_bytes())
        return record


@pytest.fixture
async def php_receiver(tmp_path: Path) -> AsyncIterator[PhpReceiver]:
    """``php -S`` serving tests/integration/php/router.php on a free loopback port."""
    php = shutil.which("php")
    if php is None:
        pytest.skip("php-cli not installed")
    port = closed_port()
    proc = await asyncio.create_subprocess_exec(
        php,
        "-S",
        f"127.0.0.1:{port}",
        str(ROUTER),
        cwd=ROUTER.parent,
        env={**os.environ, "ITEP_CAPTURE_DIR": str(tmp_path)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(15):
            while not seen or b"started" not in seen[-1]:
                line = await stderr.readline()
                if not line:
                    raise RuntimeError(f"php -S stopped: {b''.join(seen).decode()}")
                seen.append(line)

        async def drain() -> None:
            while await stderr.readline():
                pass

        drainer = asyncio.create_task(drain())
        try:
            yield PhpReceiver(url=f"http://127.0.0.1:{port}/hook", capture=tmp_path)
        finally:
            proc.terminate()
            await proc.wait()
            await drainer
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_php_post_data_is_byte_identical_to_the_json_sent(
    php_receiver: PhpReceiver, make_sender: SenderFactory
) -> None:
    sender = await make_sender()
    event = make_event("php-check-1")
    extra = {"partner": "ACME & Sons + Co = 100%", "city": "Zürich 北京 🚀"}
    request = make_request(php_receiver.url, event, extra_fields=extra)

    result = await sender.send(request)

    assert (result.status, result.error) == (200, None)
    assert php_receiver.data_for("php-check-1") == encode_data(event).encode("utf-8")
    record = php_receiver.record_for("php-check-1")
    assert record["post"] == {"data": encode_data(event), **extra}
    assert record["content_type"] == FORM_CONTENT_TYPE
