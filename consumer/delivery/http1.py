"""One HTTP/1.1 client connection: write a request, read its response with llhttp.

A connection carries one exchange at a time. ``exchange()`` writes a request already
encoded by ``encode_request`` and returns a future for its ``Response``. The response is
parsed by llhttp (through httptools). The future resolves as soon as the response is
complete, or as soon as its status stands but the rest cannot be had:
- a body larger than ``max_body`` (``truncated``);
- a body cut off, malformed or too slow (``unread``).
In both cases the connection is closed, since the receiver has answered. The future fails
with ``TimeoutError`` or a ``ConnectionError`` when no status arrived:
- ``ServerDisconnected`` for a connection closed before the status line, ``StaleConnection``
  when that connection had carried an earlier exchange and sent nothing of this one's
  answer (the server's idle timeout won the race with the reuse);
- ``MalformedResponse`` for a response that is not HTTP, or whose head exceeds 64 KiB.

A connection may carry another exchange after a complete response the server did not ask
to close (``reusable``). ``idle_since`` tells the pool how long it has waited since.

The connections of one pool share a ``Deadlines``: an exchange's deadline falls in a slot of
50 ms with one loop timer per slot, instead of a timer of its own (a uvloop timer made and
cancelled per request was 2-4% of the service's CPU). An exchange times out at the end of
its deadline's slot: up to 50 ms late, never early.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from enum import Enum
from typing import Final, cast

import httptools

from consumer.records import record

MAX_HEAD_BYTES: Final = 65536

# RFC 9110 section 5.6.2 (token) and 5.5 (field-value: no control characters but HTAB).
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NAMES_MAX: Final = 1000


class ServerDisconnected(ConnectionError):
    """The connection closed before the response's status line arrived."""


class StaleConnection(ServerDisconnected):
    """A kept-alive connection closed before a single byte of the answer to its next
    request: the race between reusing it and its server's idle timeout."""


class MalformedResponse(ConnectionError):
    """What came back is not an HTTP/1.x response, or its head exceeds ``MAX_HEAD_BYTES``."""


class BodyEnd(Enum):
    COMPLETE = "complete"  # the whole body was read
    TRUNCATED = "truncated"  # larger than the cap: read up to it, then the connection closed
    UNREAD = "unread"  # cut off, malformed or too slow: the connection closed


@record
class Response:
    status: int
    retry_after: str | None
    body_end: BodyEnd
    read_bytes: int  # body bytes kept, at most the cap
    problem: str | None = None  # why an UNREAD body ended


_good_names: set[str] = set()


def encode_request(head: bytes, headers: Mapping[str, str], body: bytes) -> bytes:
    """The request bytes: ``head`` (request line, Host and fixed headers), ``headers``,
    Content-Length and ``body``. ValueError for a header that cannot be written as is."""
    lines = []
    for name, value in headers.items():
        if name not in _good_names:
            if not _TOKEN.fullmatch(name):
                raise ValueError("a header name is not an HTTP token")
            if len(_good_names) >= _NAMES_MAX:
                _good_names.clear()
            _good_names.add(name)
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError("a header value holds a control character")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return b"".join((head, "".join(lines).encode("utf-8"), body))


class Deadlines:
    """The timeouts of many exchanges on few timers; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self._loop = loop
        self._resolution = resolution
        self._slots: dict[int, set[Http1Connection]] = {}

    def add(self, connection: Http1Connection, deadline: float) -> int:
        """Time ``connection`` out at the end of ``deadline``'s slot; returns the slot."""
        slot = math.ceil(deadline / self._resolution)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
            self._loop.call_at(slot * self._resolution, self._expire, slot)
        members.add(connection)
        return slot

    def remove(self, connection: Http1Connection, slot: int) -> None:
        members = self._slots.get(slot)
        if members is not None:
            members.discard(connection)

    def timers(self) -> int:
        """Loop timers pending: one per slot in use."""
        return len(self._slots)

    def _expire(self, slot: int) -> None:
        for connection in self._slots.pop(slot, ()):
            connection._time_out()


class Http1Connection(asyncio.Protocol):
    """An ``asyncio.Protocol`` for one client connection; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        self._loop = loop
        self._deadlines = deadlines
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._slot: int | None = None  # of ``deadlines``, while an exchange waits
        self._max_body = 0
        self._head_bytes = 0  # the header fields' bytes
        self._unparsed = 0  # bytes received while the head is incomplete
        self._status = 0
        self._retry_after: str | None = None
        self._framed = False  # Content-Length or Transfer-Encoding: the body's end is known
        self._headers_done = False
        self._read = 0
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self.exchanges = 0  # requests written on this connection

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is None:
            return
        if not self._headers_done:
            if self.exchanges > 1 and self._unparsed == 0:
                self._fail(StaleConnection("kept-alive connection closed before any answer"))
            else:
                self._fail(ServerDisconnected("connection closed before the response"))
        elif not self._framed:
            self._finish(BodyEnd.COMPLETE)  # the body ran to the end of the connection
        else:
            self._finish(BodyEnd.UNREAD, "ServerDisconnected")

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(BodyEnd.COMPLETE)  # 101: the connection is no longer HTTP
        except httptools.HttpParserError as exc:
            if self._headers_done:
                self._finish(BodyEnd.UNREAD, type(exc).__name__)
            else:
                self._fail(MalformedResponse(f"not an HTTP response: {exc}"))
        if self._waiter is not None and not self._headers_done:
            # A head still incomplete: all it has sent so far is head.
            self._unparsed += len(data)
            if self._unparsed > MAX_HEAD_BYTES:
                self._fail(MalformedResponse(f"response head exceeds {MAX_HEAD_BYTES} bytes"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self.close()  # a second response in the same read: the connection is out of step

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked body's trailers
        self._head_bytes += len(name) + len(value)
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(MalformedResponse(f"response head exceeds {MAX_HEAD_BYTES} bytes"))
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim response: the real one follows
        self._status = status
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            return
        room = self._max_body - self._read
        if len(body) > room:
            self._read += room
            self._finish(BodyEnd.TRUNCATED)
        else:
            self._read += len(body)

    def on_message_complete(self) -> None:
        if not self._headers_done:
            self._framed = False  # the interim response ended; the next one starts afresh
            self._retry_after = None
            return
        if self._waiter is not None:
            self.reusable = self._parser.should_keep_alive()
            self._finish(BodyEnd.COMPLETE)

    # the exchange

    def exchange(self, request: bytes, deadline: float, max_body: int) -> asyncio.Future[Response]:
        """Write ``request``; the future resolves to its response (see the module docstring).
        ``deadline`` is in ``loop.time()``."""
        waiter = self._loop.create_future()
        if self.closed or self._transport is None or self._transport.is_closing():
            waiter.set_exception(StaleConnection("connection closed before the request"))
            return waiter
        self.exchanges += 1
        self._waiter = waiter
        self._max_body = max_body
        self._head_bytes = self._unparsed = self._read = self._status = 0
        self._retry_after = None
        self._framed = self._headers_done = self.reusable = False
        self._slot = self._deadlines.add(self, deadline)
        self._transport.write(request)
        return waiter

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _time_out(self) -> None:
        self._slot = None
        if self._headers_done:
            self._finish(BodyEnd.UNREAD, "TimeoutError")
        else:
            self._fail(TimeoutError())

    def _finish(self, end: BodyEnd, problem: str | None = None) -> None:
        waiter = self._end()
        if waiter is None:
            return
        if end is not BodyEnd.COMPLETE:
            self.close()
        waiter.set_result(Response(self._status, self._retry_after, end, self._read, problem))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._end()
        if waiter is None:
            return
        self.close()
        waiter.set_exception(exc)

    def _end(self) -> asyncio.Future[Response] | None:
        """The pending waiter, detached, with its timer stopped; None once it has settled."""
        waiter, self._waiter = self._waiter, None
        if self._slot is not None:
            self._deadlines.remove(self, self._slot)
            self._slot = None
        if waiter is None or waiter.done():
            return None
        self.idle_since = self._loop.time()
        return waiter
