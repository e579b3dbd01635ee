"""Open, keep and reuse HTTP/1.1 connections per origin; resolve names, guarded and cached.

``Origin`` is what one server is: scheme, host and port, and the bytes every request to it
starts with. ``ConnectionPool.acquire`` hands out an idle connection to the origin, or opens
one: it resolves the host (answers kept ``dns_ttl`` seconds), drops the addresses
``endpoint_guard`` refuses when ``guard`` is on (``EndpointBlocked`` if none is left), and
tries the rest in order within ``connect_timeout``. ``release`` keeps a connection that can
carry another request, up to ``max_idle`` idle connections in all: past that, the one idle
longest, to whichever origin, is closed to make room, so sockets stay bounded however many
partners there are while the origins in use keep theirs. One idle longer than ``keepalive``
is closed, not reused.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from consumer.delivery.endpoint_guard import IPAddress, is_blocked_address
from consumer.delivery.http1 import Deadlines, Http1Connection
from consumer.errors import EndpointBlocked

_DNS_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Origin:
    key: str  # scheme://host:port
    tls: bool
    host: str  # as it goes to the resolver and into TLS's server name
    port: int
    literal: IPAddress | None  # the address, when the host is an IP literal
    # "POST <path> HTTP/1.1", Host and the fixed headers of every request; the path's
    # query may carry credentials (auth_method query), so it stays out of repr.
    head: bytes = field(repr=False)


Lookup = Callable[[str, int], Awaitable[list[str]]]


async def getaddrinfo(host: str, port: int) -> list[str]:
    """The addresses of ``host`` for a TCP connection, in the resolver's order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Resolver:
    """``lookup`` answers per (host, port), kept ``ttl`` seconds; with ``guard``, only the
    addresses a webhook may reach."""

    def __init__(self, *, guard: bool, ttl: float = 10.0, lookup: Lookup = getaddrinfo) -> None:
        self._guard = guard
        self._ttl = ttl
        self._lookup = lookup
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """Raises ``EndpointBlocked`` when ``guard`` leaves no address, ``OSError`` when the
        name does not resolve."""
        now = time.monotonic()
        cached = self._cache.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self._lookup(host, port)
        if self._guard:
            addresses = [address for address in addresses if not is_blocked_address(address)]
            if not addresses:
                raise EndpointBlocked(host)
        if len(self._cache) >= _DNS_MAX:
            self._cache.clear()
        self._cache[(host, port)] = (now + self._ttl, addresses)
        return addresses


class ConnectionPool:
    """Idle connections per origin, newest first out; see the module docstring."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        guard: bool,
        keepalive: float = 15.0,
        dns_ttl: float = 10.0,
        max_idle: int = 1000,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._max_idle = max_idle
        self._resolver = Resolver(guard=guard, ttl=dns_ttl)
        # Per origin, newest last; and every idle connection with its origin, oldest first.
        self._idle: dict[str, list[Http1Connection]] = {}
        self._idle_order: OrderedDict[Http1Connection, str] = OrderedDict()
        self._open: set[Http1Connection] = set()
        self._tls: ssl.SSLContext | None = None
        self._next_sweep = 0.0
        self._deadlines: Deadlines | None = None  # made on the loop of the first connect

    async def acquire(self, origin: Origin, *, fresh: bool = False) -> Http1Connection:
        """A connection to ``origin``, a new one if ``fresh``. Raises ``EndpointBlocked``,
        ``TimeoutError`` (after ``connect_timeout``) or ``OSError``."""
        idle = None if fresh else self._idle.get(origin.key)
        if idle:
            expired = asyncio.get_running_loop().time() - self._keepalive
            while idle:
                connection = idle.pop()
                del self._idle_order[connection]
                if not connection.closed and connection.idle_since > expired:
                    return connection
                self._discard(connection)
        async with asyncio.timeout(self._connect_timeout):
            return await self._connect(origin)

    def release(self, origin: Origin, connection: Http1Connection) -> None:
        """Keep ``connection`` for the next request to ``origin`` if it can take one; with
        ``max_idle`` connections already idle, close the one idle longest first."""
        if connection.reusable and not connection.closed:
            if len(self._idle_order) >= self._max_idle:
                self._evict_oldest()
            self._idle.setdefault(origin.key, []).append(connection)
            self._idle_order[connection] = origin.key
        else:
            self._discard(connection)
        now = asyncio.get_running_loop().time()
        if now >= self._next_sweep:
            self._next_sweep = now + self._keepalive
            self._sweep(now - self._keepalive)

    def close(self) -> None:
        """Close every connection, idle or not."""
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        self._idle_order.clear()

    async def _connect(self, origin: Origin) -> Http1Connection:
        loop = asyncio.get_running_loop()
        if self._deadlines is None:
            self._deadlines = Deadlines(loop)
        deadlines = self._deadlines
        if origin.literal is not None:
            addresses = [str(origin.literal)]
        else:
            addresses = await self._resolver.resolve(origin.host, origin.port)
        tls = self._tls_context() if origin.tls else None
        failure: OSError = OSError(f"{origin.host}: no address")
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    lambda: Http1Connection(loop, deadlines),
                    address,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
            except OSError as exc:
                failure = exc
                continue
            self._open.add(connection)
            return connection
        raise failure

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _discard(self, connection: Http1Connection) -> None:
        connection.close()
        self._open.discard(connection)

    def _evict_oldest(self) -> None:
        connection, key = self._idle_order.popitem(last=False)
        idle = self._idle[key]
        idle.remove(connection)  # the origin's oldest: at or near the front
        if not idle:
            del self._idle[key]
        self._discard(connection)

    def _sweep(self, expired: float) -> None:
        """Close idle connections older than ``expired`` or closed by their server."""
        for key, idle in list(self._idle.items()):
            keep = []
            for connection in idle:
                if connection.closed or connection.idle_since <= expired:
                    del self._idle_order[connection]
                    self._discard(connection)
                else:
                    keep.append(connection)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
