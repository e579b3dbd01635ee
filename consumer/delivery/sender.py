"""POST webhook requests over HTTP/1.1; every HTTP-level outcome becomes an ``AttemptResult``.

The connections are this package's own (``consumer.delivery.connections`` and ``http1``,
with llhttp parsing the responses): a webhook is one small POST, and aiohttp's
``ClientSession`` spent several times the CPU of everything else on it. The body and
headers of a ``WebhookRequest`` go out byte for byte, redirects are not followed, and the
response body is read up to ``max_response_bytes`` and otherwise dropped. Timeouts,
connection problems and refused targets become ``error`` codes (``timeout``,
``connection_error``, ``endpoint_blocked``, ``invalid_url``, ``invalid_request``) for
``consumer.delivery.retry_policy``; only a programming error raises.

A semaphore per origin (scheme, host and port), taken before the clock starts, keeps one
slow receiver from taking every connection; a global one of ``max_connections`` bounds the
requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import structlog
from yarl import URL

from consumer.delivery.connections import ConnectionPool, Origin
from consumer.delivery.endpoint_guard import IPAddress, is_blocked_address, literal_address
from consumer.delivery.http1 import (
    BodyEnd,
    Http1Connection,
    Response,
    StaleConnection,
    encode_request,
)
from consumer.delivery.retry_policy import AttemptResult
from consumer.delivery.slots import Slots
from consumer.delivery.webhook import WebhookRequest
from consumer.errors import EndpointBlocked
from consumer.settings import Settings

log = structlog.get_logger()


def origin(url: URL) -> str:
    """``scheme://host:port``: what one server is, for the per-origin limit."""
    return f"{url.scheme}://{url.host}:{url.port}"


# Sent with every request, after the request line and Host.
_FIXED_HEADERS = "Accept: */*\r\n"


def _origin_of(url: URL, literal: IPAddress | None) -> Origin | None:
    """Where ``url`` leads and how each request to it starts (``literal``: the address its
    host names, if an IP literal); None for a URL that cannot be sent to: not http(s), no
    host, credentials in it, or a numeric host that is not a canonical IPv4 address
    (``127.1``, ``2130706433``: spellings that hide an address)."""
    host = url.raw_host
    if url.scheme not in ("http", "https") or not host or url.raw_user is not None:
        return None
    numeric = ":" not in host and host.rstrip(".").rsplit(".", 1)[-1].isdigit()
    if numeric and (literal is None or str(literal) != host):
        return None
    path = url.raw_path_qs or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n{_FIXED_HEADERS}"
    return Origin(
        key=origin(url),
        tls=url.scheme == "https",
        host=host,
        port=url.port or (443 if url.scheme == "https" else 80),
        literal=literal,
        head=head.encode("ascii"),
    )


@dataclass(frozen=True, slots=True)
class _Target:
    origin: Origin | None  # None: an address literal ALLOW_PRIVATE_ENDPOINTS=false refuses


_TARGETS_MAX = 10_000
# Idle connections kept, per connection that may be in use. At one each, 1,000 requests in
# flight over 20 partners reopened 11% of their connections: each partner's share of the
# in-flight requests moves, and the connections one partner's peak left idle were closed
# before the next peak (make bench, scenario 2). At two each, none were; sockets stay
# bounded at three per MAX_IN_FLIGHT.
IDLE_PER_CONNECTION: Final = 2


@dataclass(slots=True)
class _HostSlots:
    """The per-host slots, with how many requests wait for them or hold one."""

    limit: Slots
    users: int = 0
    in_flight: int = 0


class WebhookSender:
    """Sends ``WebhookRequest``s; ``start()`` before the first ``send``, ``close()`` after."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        max_response_bytes: int = 65536,
        max_per_host: int = 100,
        max_connections: int = 1000,
        allow_private_endpoints: bool = False,
    ) -> None:
        if max_per_host < 1 or max_connections < 1 or max_response_bytes < 0:
            raise ValueError(
                "max_per_host and max_connections must be >= 1, max_response_bytes >= 0"
            )
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._max_response_bytes = max_response_bytes
        self._max_per_host = max_per_host
        self._max_connections = max_connections
        self._allow_private = allow_private_endpoints
        self._pool: ConnectionPool | None = None
        self._connections: Slots | None = None
        self._hosts: dict[str, _HostSlots] = {}
        self._targets: dict[str, _Target | None] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSender:
        return cls(
            connect_timeout=settings.http_connect_timeout,
            total_timeout=settings.http_total_timeout,
            max_response_bytes=settings.max_response_bytes,
            max_per_host=settings.max_in_flight_per_host,
            max_connections=settings.max_in_flight,
            allow_private_endpoints=settings.allow_private_endpoints,
        )

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = ConnectionPool(
            connect_timeout=min(self._connect_timeout, self._total_timeout),
            guard=not self._allow_private,
            max_idle=IDLE_PER_CONNECTION * self._max_connections,
        )
        self._connections = Slots(self._max_connections)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            # Let the transports deliver their connection_lost before the loop moves on.
            await asyncio.sleep(0)

    async def __aenter__(self) -> WebhookSender:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def in_flight_for(self, url: str) -> int:
        """Requests to ``url``'s origin holding a slot right now (not those queued for one)."""
        slots = self._hosts.get(origin(URL(url)))
        return slots.in_flight if slots is not None else 0

    def queued_for(self, url: str) -> int:
        """Requests to ``url``'s origin waiting for a slot."""
        slots = self._hosts.get(origin(URL(url)))
        return slots.users - slots.in_flight if slots is not None else 0

    def _target(self, raw: str) -> _Target | None:
        """Where ``raw`` leads and whether it names a refused address literal; kept per URL
        (there is one per tracking code). None for a URL that cannot be sent to."""
        try:
            return self._targets[raw]
        except KeyError:
            pass
        target: _Target | None = None
        try:
            url = URL(raw)
        except ValueError:
            url = None
        if url is not None:
            literal = literal_address(url.raw_host or "")
            if not self._allow_private and literal is not None and is_blocked_address(literal):
                target = _Target(None)
            else:
                where = _origin_of(url, literal)
                target = _Target(where) if where is not None else None
        if len(self._targets) >= _TARGETS_MAX:
            self._targets.clear()
        self._targets[raw] = target
        return target

    async def send(self, request: WebhookRequest) -> AttemptResult:
        """POST ``request`` once. HTTP-level problems come back as ``AttemptResult.error``."""
        if self._pool is None or self._connections is None:
            raise RuntimeError("WebhookSender.send() called before start()")
        pool, connections = self._pool, self._connections
        target = self._target(request.url)
        if target is None:
            return AttemptResult(status=None, latency_ms=0.0, error="invalid_url")
        if target.origin is None:
            log.warning("webhook_endpoint_blocked", endpoint_host=request.endpoint_host)
            return AttemptResult(status=None, latency_ms=0.0, error="endpoint_blocked")
        key = target.origin.key
        slots = self._hosts.get(key)
        if slots is None:
            slots = self._hosts[key] = _HostSlots(Slots(self._max_per_host))
        slots.users += 1
        try:
            await slots.limit.acquire()
            try:
                await connections.acquire()
                slots.in_flight += 1
                try:
                    return await self._timed(pool, target.origin, request)
                finally:
                    slots.in_flight -= 1
                    connections.release()
            finally:
                slots.limit.release()
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._hosts[key]

    async def _timed(
        self, pool: ConnectionPool, where: Origin, request: WebhookRequest
    ) -> AttemptResult:
        """One POST, holding its slots, timed from the moment it goes out."""
        # Waiting for a slot may take a while: the timestamp is that of the POST itself.
        request = request.stamped(int(time.time()))
        try:
            payload = encode_request(where.head, request.headers, request.body)
        except ValueError as exc:
            # A header that cannot be written as is: the request as built can never be sent,
            # so the attempt fails for good, and nothing goes out.
            log.warning(
                "webhook_request_invalid",
                endpoint_host=request.endpoint_host,
                error_type=type(exc).__name__,
            )
            return AttemptResult(status=None, latency_ms=0.0, error="invalid_request")
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        started = time.perf_counter()
        status: int | None = None
        retry_after: str | None = None
        error: str | None = None
        try:
            response = await self._post(pool, where, payload)
        except EndpointBlocked:
            log.warning("webhook_endpoint_blocked", endpoint_host=request.endpoint_host)
            error = "endpoint_blocked"
        except TimeoutError:
            error = "timeout"
        except OSError as exc:
            log.info(
                "webhook_connection_failed",
                endpoint_host=request.endpoint_host,
                error_type=type(exc).__name__,
            )
            error = "connection_error"
        else:
            status, retry_after = response.status, response.retry_after
            if response.body_end is not BodyEnd.COMPLETE:
                self._log_body_end(response, request.endpoint_host)
        latency_ms = (time.perf_counter() - started) * 1000.0
        return AttemptResult(
            status=status, latency_ms=latency_ms, error=error, retry_after=retry_after
        )

    async def _post(self, pool: ConnectionPool, where: Origin, payload: bytes) -> Response:
        deadline = asyncio.get_running_loop().time() + self._total_timeout
        connection = await pool.acquire(where)
        try:
            return await self._exchange(pool, where, connection, payload, deadline)
        except StaleConnection:
            # The server closed the kept-alive connection as the request went out, before
            # a byte of the answer: once more on a new connection, within the same deadline.
            # Receivers that saw the first copy have its webhook-id to tell.
            async with asyncio.timeout_at(deadline):
                connection = await pool.acquire(where, fresh=True)
            return await self._exchange(pool, where, connection, payload, deadline)

    async def _exchange(
        self,
        pool: ConnectionPool,
        where: Origin,
        connection: Http1Connection,
        payload: bytes,
        deadline: float,
    ) -> Response:
        try:
            response = await connection.exchange(payload, deadline, self._max_response_bytes)
        except BaseException:
            connection.close()  # cancelled or failed mid-exchange: never reused
            pool.release(where, connection)
            raise
        pool.release(where, connection)
        return response

    def _log_body_end(self, response: Response, host: str) -> None:
        """A body larger than the cap, cut off or too slow closed the connection; the
        attempt stands, since the receiver has answered."""
        if response.body_end is BodyEnd.TRUNCATED:
            log.info(
                "webhook_response_truncated",
                endpoint_host=host,
                status=response.status,
                read_bytes=response.read_bytes,
            )
        else:
            log.info(
                "webhook_response_unread",
                endpoint_host=host,
                status=response.status,
                read_bytes=response.read_bytes,
                error_type=response.problem,
            )
