"""Tracking codes from Postgres, cached in memory. Speaks asyncpg only.

A lookup is answered from memory while its entry is younger than ``ttl`` (4 s by default, so a
change to a row takes effect within 5 s of its commit, CONTRACT section 4). Codes that are not
fresh are collected and looked up together by ``_lookup_routine``: one
``code = ANY($1::text[])`` query per batch, a batch being every code asked for during the same
loop tick or while the previous query ran. Unknown codes are cached (as None) like known ones.
An entry asked for once it is past half its ``ttl`` is answered from memory at once and
looked up again in the background, so a code in steady use never expires and no event waits
for Postgres's round trip every ``ttl``.

When Postgres cannot be reached, a code with a cached entry is served from it however old; a
code with no entry waits, tried again with backoff (``retry_initial`` doubling up to
``retry_max``), until Postgres answers: no lookup is dropped or failed for an outage. An outage
is logged once when it starts (``tracking_store_unavailable``, with the error class only) and
once when it ends (``tracking_store_recovered``).

A row that breaks CONTRACT section 4 (only possible when edited by hand) is logged as
``tracking_code_invalid`` and treated as unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson
import structlog

from consumer.errors import InvalidTrackingCode, StoreUnavailable
from consumer.postgres import UNAVAILABLE, create_pool
from consumer.tracking_codes import AuthMethod, TrackingCode, validate_tracking_code

_SELECT_BY_CODES: Final = """
SELECT code, endpoint_url, auth_method, auth_params, extra_fields, signing_secret,
       call_on_finished, active, paused
FROM tracking_codes
WHERE code = ANY($1::text[])
"""


log = structlog.get_logger()

# An entry is looked up again in the background once this share of its ttl has passed.
REFRESH_AT: Final = 0.5


def _dumps(value: Any) -> str:  # noqa: ANN401 -- any JSON value
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode json and jsonb columns to Python values (and encode them back) with orjson."""
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=_dumps, decoder=orjson.loads, format="text"
        )


def row_to_tracking_code(row: asyncpg.Record) -> TrackingCode:
    """A ``tracking_codes`` row as a valid ``TrackingCode``; ``InvalidTrackingCode`` if not."""
    try:
        method = AuthMethod(row["auth_method"])
    except ValueError:
        raise InvalidTrackingCode("auth_method", "is not a known method") from None
    auth_params = row["auth_params"]
    extra_fields = row["extra_fields"]
    if not isinstance(auth_params, dict):
        raise InvalidTrackingCode("auth_params", "must be an object")
    if not isinstance(extra_fields, dict):
        raise InvalidTrackingCode("extra_fields", "must be an object")
    return validate_tracking_code(
        TrackingCode(
            code=row["code"],
            endpoint_url=row["endpoint_url"],
            auth_method=method,
            auth_params=auth_params,
            extra_fields=extra_fields,
            signing_secret=row["signing_secret"],
            call_on_finished=row["call_on_finished"],
            active=row["active"],
            paused=row.get("paused", False),
        )
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    value: TrackingCode | None
    fetched_at: float


class TrackingCodeStore:
    """Cached, batched tracking-code lookups over an asyncpg pool.

    ``start()`` before use, ``close()`` after. ``queries`` counts the lookup queries tried.
    Lookups run one batch at a time, so the pool needs few connections; the spare ones let a
    batch start while a broken connection is being replaced.
    """

    def __init__(
        self,
        dsn: str,
        *,
        ttl: float = 4.0,
        pool_size: int = 2,
        clock: Callable[[], float] = time.monotonic,
        retry_initial: float = 0.5,
        retry_max: float = 5.0,
        query_timeout: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self._dsn = dsn
        self._ttl = ttl
        self._refresh_after = ttl * REFRESH_AT
        self._pool_size = pool_size
        self._clock = clock
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._query_timeout = query_timeout
        self._max_entries = max_entries
        self.queries = 0
        self._pool: asyncpg.Pool | None = None
        self._routine: asyncio.Task[None] | None = None
        self._cache: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Future[TrackingCode | None]] = {}
        self._wakeup = asyncio.Event()
        self._outage_started: float | None = None

    @property
    def running(self) -> bool:
        """True while the lookup routine runs (from ``start`` until ``close``)."""
        return self._routine is not None and not self._routine.done()

    @property
    def available(self) -> bool:
        """False from a failed lookup query until the next one succeeds."""
        return self._outage_started is None

    async def start(self) -> None:
        """Create the pool (connections are opened on first use) and the lookup routine."""
        self._pool = await create_pool(
            self._dsn,
            max_size=self._pool_size,
            init=init_connection,
            connect_timeout=self._query_timeout,
        )
        self._routine = asyncio.create_task(self._lookup_routine(), name="tracking_lookup")
        self._routine.add_done_callback(self._routine_ended)

    async def close(self) -> None:
        """Stop lookups, fail the waiting ones with ``StoreUnavailable``, close the pool."""
        if self._routine is not None:
            self._routine.cancel()
            await asyncio.wait([self._routine])
        self._fail_pending("the tracking-code store is closed")
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._query_timeout)
            except TimeoutError:
                self._pool.terminate()

    def cached(self, code: str) -> tuple[bool, TrackingCode | None]:
        """``(True, value)`` for a fresh entry (value None: unknown code), else ``(False, None)``.

        No I/O: for callers that want to skip a ``get`` when the answer is in memory.
        """
        entry = self._cache.get(code)
        if entry is not None and self._clock() - entry.fetched_at < self._ttl:
            return True, entry.value
        return False, None

    async def get(self, code: str) -> TrackingCode | None:
        """The tracking code ``code``, or None when there is no such code.

        Waits while Postgres is unreachable and nothing is cached for ``code``.
        """
        entry = self._cache.get(code)
        if entry is not None:
            age = self._clock() - entry.fetched_at
            if age < self._ttl:
                if age >= self._refresh_after and self.running:
                    self._request(code)  # looked up again behind this answer, not waited for
                return entry.value
        if not self.running:
            raise StoreUnavailable("the tracking-code store is not running")
        future = self._request(code)
        if entry is not None and not self.available:
            return entry.value
        return await asyncio.shield(future)

    def _request(self, code: str) -> asyncio.Future[TrackingCode | None]:
        future = self._pending.get(code)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[code] = future
            self._wakeup.set()
        return future

    async def _lookup_routine(self) -> None:
        delay = self._retry_initial
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(0)  # codes asked for in the same loop tick join this batch
            self._wakeup.clear()
            codes = list(self._pending)
            if not codes:
                continue
            fetched_at = self._clock()
            try:
                found = await self._fetch(codes)
            except UNAVAILABLE as exc:
                self._note_unavailable(exc)
                self._serve_stale(codes)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                self._wakeup.set()
                continue
            delay = self._retry_initial
            self._note_recovered()
            for code in codes:
                value = found.get(code)
                self._cache[code] = _Entry(value, fetched_at)
                future = self._pending.pop(code)
                if not future.done():
                    future.set_result(value)
            if len(self._cache) > self._max_entries:
                self._prune_unknown()

    async def _fetch(self, codes: list[str]) -> dict[str, TrackingCode]:
        if self._pool is None:
            raise StoreUnavailable("the tracking-code store is not running")
        # Postgres text cannot hold NUL, so no row matches such a code; sent along, it would
        # fail the whole batch, again and again, as if the database were down.
        queryable = [code for code in codes if "\x00" not in code]
        if not queryable:
            return {}
        self.queries += 1
        async with asyncio.timeout(self._query_timeout), self._pool.acquire() as conn:
            rows = await conn.fetch(_SELECT_BY_CODES, queryable)
        found: dict[str, TrackingCode] = {}
        for row in rows:
            try:
                found[row["code"]] = row_to_tracking_code(row)
            except InvalidTrackingCode as exc:
                log.warning(
                    "tracking_code_invalid",
                    tracking_code=row["code"],
                    field=exc.field,
                    rule=exc.rule,
                )
        return found

    def _serve_stale(self, codes: Iterable[str]) -> None:
        """Answer the codes that have an entry, however old, while Postgres is away."""
        for code in codes:
            entry = self._cache.get(code)
            if entry is not None:
                future = self._pending.pop(code)
                if not future.done():
                    future.set_result(entry.value)

    def _prune_unknown(self) -> None:
        """Forget expired unknown codes, so that a flood of made-up codes cannot grow the cache."""
        now = self._clock()
        for code in [
            code
            for code, entry in self._cache.items()
            if entry.value is None and now - entry.fetched_at >= self._ttl
        ]:
            del self._cache[code]

    def _note_unavailable(self, exc: BaseException) -> None:
        if self._outage_started is not None:
            return
        self._outage_started = self._clock()
        waiting = sum(1 for code in self._pending if code not in self._cache)
        log.warning("tracking_store_unavailable", error=exc.__class__.__name__, waiting=waiting)

    def _note_recovered(self) -> None:
        if self._outage_started is None:
            return
        seconds = self._clock() - self._outage_started
        self._outage_started = None
        log.info("tracking_store_recovered", outage_seconds=round(seconds, 3))

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(StoreUnavailable(reason))
                future.exception()  # retrieved here; waiters still get it when they await

    def _routine_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("tracking_lookup_stopped", error=exc.__class__.__name__, exc_info=exc)
            self._fail_pending("tracking-code lookups stopped")
