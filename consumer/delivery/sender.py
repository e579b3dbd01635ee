"""POST webhook requests with aiohttp; every HTTP-level outcome becomes an ``AttemptResult``.

One ``ClientSession`` is shared by all deliveries. The body and headers of a
``WebhookRequest`` go out byte for byte, redirects are not followed, and the response body
is read up to ``max_response_bytes`` and otherwise dropped. Timeouts, connection problems
and refused targets become ``error`` codes (``timeout``, ``connection_error``,
``endpoint_blocked``, ``invalid_url``, ``invalid_request``) for ``consumer.delivery.retry_policy``;
only a programming error raises.

A semaphore per origin (scheme, host and port), taken before the clock starts, keeps one
slow receiver from taking every connection; a global one of ``max_connections`` keeps
aiohttp's own pool from making requests queue inside the timed part.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import structlog
from aiohttp import hdrs
from aiohttp.resolver import DefaultResolver
from yarl import URL

from consumer.delivery.endpoint_guard import (
    GuardedResolver,
    is_blocked_address,
    literal_address,
)
from consumer.delivery.retry_policy import AttemptResult
from consumer.delivery.webhook import WebhookRequest
from consumer.errors import EndpointBlocked
from consumer.settings import Settings

log = structlog.get_logger()


def origin(url: URL) -> str:
    """``scheme://host:port``: what one server is, for the per-origin limit."""
    return f"{url.scheme}://{url.host}:{url.port}"


@dataclass(frozen=True, slots=True)
class _Target:
    url: URL
    origin: str
    blocked: bool  # an address literal ALLOW_PRIVATE_ENDPOINTS=false refuses


_TARGETS_MAX = 10_000


@dataclass(slots=True)
class _HostSlots:
    """The per-host semaphore, with how many requests wait for it or hold it."""

    semaphore: asyncio.Semaphore
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
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout, connect=connect_timeout, sock_connect=connect_timeout
        )
        self._max_response_bytes = max_response_bytes
        self._max_per_host = max_per_host
        self._max_connections = max_connections
        self._allow_private = allow_private_endpoints
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._connections: asyncio.Semaphore | None = None
        self._hosts: dict[str, _HostSlots] = {}
        self._targets: dict[str, _Target] = {}

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
        if self._session is not None:
            return
        resolver = None if self._allow_private else GuardedResolver(DefaultResolver())
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_per_host,
            resolver=resolver,
        )
        self._connections = asyncio.Semaphore(self._max_connections)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
        )
        # The connector closes only resolvers it made itself.
        self._resolver = resolver

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

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
        """``raw`` parsed, its origin and whether it names a refused address literal; kept
        per URL (there is one per tracking code). None for a URL that does not parse."""
        target = self._targets.get(raw)
        if target is None:
            try:
                url = URL(raw)
            except ValueError:
                return None
            literal = literal_address(url.raw_host or "")
            blocked = (
                not self._allow_private and literal is not None and is_blocked_address(literal)
            )
            target = _Target(url, origin(url), blocked)
            if len(self._targets) >= _TARGETS_MAX:
                self._targets.clear()
            self._targets[raw] = target
        return target

    async def send(self, request: WebhookRequest) -> AttemptResult:
        """POST ``request`` once. HTTP-level problems come back as ``AttemptResult.error``."""
        if self._session is None or self._connections is None:
            raise RuntimeError("WebhookSender.send() called before start()")
        session, connections = self._session, self._connections
        target = self._target(request.url)
        if target is None:
            return AttemptResult(status=None, latency_ms=0.0, error="invalid_url")
        if target.blocked:
            log.warning("webhook_endpoint_blocked", endpoint_host=request.endpoint_host)
            return AttemptResult(status=None, latency_ms=0.0, error="endpoint_blocked")
        slots = self._hosts.get(target.origin)
        if slots is None:
            slots = self._hosts[target.origin] = _HostSlots(asyncio.Semaphore(self._max_per_host))
        slots.users += 1
        try:
            async with slots.semaphore, connections:
                slots.in_flight += 1
                try:
                    return await self._timed(session, target.url, request)
                finally:
                    slots.in_flight -= 1
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._hosts[target.origin]

    async def _timed(
        self, session: aiohttp.ClientSession, url: URL, request: WebhookRequest
    ) -> AttemptResult:
        """One POST, holding its slots, timed from the moment it goes out."""
        # Waiting for a slot may take a while: the timestamp is that of the POST itself.
        request = request.stamped(int(time.time()))
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        started = time.perf_counter()
        status: int | None = None
        retry_after: str | None = None
        error: str | None = None
        try:
            status, retry_after = await self._post(session, url, request)
        except EndpointBlocked:
            log.warning("webhook_endpoint_blocked", endpoint_host=request.endpoint_host)
            error = "endpoint_blocked"
        except TimeoutError:
            error = "timeout"
        except aiohttp.InvalidURL:
            error = "invalid_url"
        except ValueError as exc:
            # aiohttp refuses to send a header with control characters: the request as
            # built can never be sent, so the attempt fails for good.
            log.warning(
                "webhook_request_invalid",
                endpoint_host=request.endpoint_host,
                error_type=type(exc).__name__,
            )
            error = "invalid_request"
        except aiohttp.ClientError as exc:
            log.info(
                "webhook_connection_failed",
                endpoint_host=request.endpoint_host,
                error_type=type(exc).__name__,
            )
            error = "connection_error"
        latency_ms = (time.perf_counter() - started) * 1000.0
        return AttemptResult(
            status=status, latency_ms=latency_ms, error=error, retry_after=retry_after
        )

    async def _post(
        self, session: aiohttp.ClientSession, url: URL, request: WebhookRequest
    ) -> tuple[int, str | None]:
        async with session.post(
            url,
            data=request.body,
            headers=request.headers,
            allow_redirects=False,
            timeout=self._timeout,
        ) as response:
            await self._drain(response, request.endpoint_host)
            return response.status, response.headers.get(hdrs.RETRY_AFTER)

    async def _drain(self, response: aiohttp.ClientResponse, host: str) -> None:
        """Read at most ``max_response_bytes`` of the body; the status already stands.

        A body that is larger, slow or cut off closes the connection instead of failing
        the attempt: the receiver has answered.
        """
        received = 0
        try:
            while received < self._max_response_bytes:
                chunk = await response.content.read(self._max_response_bytes - received)
                if not chunk:
                    return
                received += len(chunk)
            if response.content.at_eof():
                return
            log.info(
                "webhook_response_truncated",
                endpoint_host=host,
                status=response.status,
                read_bytes=received,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.info(
                "webhook_response_unread",
                endpoint_host=host,
                status=response.status,
                read_bytes=received,
                error_type=type(exc).__name__,
            )
        response.close()
