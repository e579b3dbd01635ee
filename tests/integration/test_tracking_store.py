"""TrackingCodeStore against the real Postgres: cached, batched, and patient through outages.

Outages are made with ``PostgresProxy``, a TCP forwarder to Postgres that a test takes down
(cutting every connection through it) and brings back on the same port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from consumer.errors import StoreUnavailable
from consumer.tracking_codes import AuthMethod, TrackingCode
from consumer.tracking_store import TrackingCodeStore
from tests.proxy import PostgresProxy

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PASSWORD_IN_DSN = "dsn-pass-7f3a"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[PostgresProxy]:
    target = urlsplit(database_url)
    server = PostgresProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def through(proxy: PostgresProxy, database_url: str) -> str:
    """The test database's DSN via the proxy, with a password (ignored by trust auth)."""
    parts = urlsplit(database_url)
    return parts._replace(netloc=f"postgres:{PASSWORD_IN_DSN}@127.0.0.1:{proxy.port}").geturl()


StoreFactory = Callable[..., Any]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    stores: list[TrackingCodeStore] = []

    async def make(dsn: str, **options: Any) -> TrackingCodeStore:
        store = TrackingCodeStore(dsn, **options)
        await store.start()
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.close()


async def insert(db: asyncpg.Connection, code: str, url: str = "https://h.example/x", **cols: Any):
    values = {"code": code, "endpoint_url": url, **cols}
    names = ", ".join(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await db.execute(
        f"INSERT INTO tracking_codes ({names}) VALUES ({placeholders})",  # noqa: S608
        *values.values(),
    )


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a counter or flag of the store, which offers no event to await."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_lookup_returns_the_row_as_a_tracking_code(database_url, db, make_store):
    await insert(
        db,
        "ACME-UNI",
        "https://hooks.example.edu/itep",
        auth_method="basic",
        auth_params={"username": "acme", "password": "pw"},
        extra_fields={"source": "itep"},
        signing_secret=SECRET,
        call_on_finished=True,
        active=False,
    )
    store = await make_store(database_url)
    assert await store.get("ACME-UNI") == TrackingCode(
        code="ACME-UNI",
        endpoint_url="https://hooks.example.edu/itep",
        auth_method=AuthMethod.BASIC,
        auth_params={"username": "acme", "password": "pw"},
        extra_fields={"source": "itep"},
        signing_secret=SECRET,
        call_on_finished=True,
        active=False,
    )


async def test_unknown_code_is_none_and_cached_as_such(database_url, make_store):
    store = await make_store(database_url)
    assert store.cached("NOPE") == (False, None)
    assert await store.get("NOPE") is None
    assert await store.get("NOPE") is None
    assert store.cached("NOPE") == (True, None)
    assert store.queries == 1


async def test_a_code_with_a_nul_is_unknown_and_blocks_no_other_lookup(
    database_url, db, make_store
):
    """Postgres text cannot hold NUL: such a code is unknown, and the batch it came in with is
    still answered."""
    await insert(db, "REAL")
    store = await make_store(database_url)
    evil, real = await asyncio.gather(store.get("EVIL\x00CODE"), store.get("REAL"))
    assert evil is None
    assert real is not None
    assert real.code == "REAL"
    assert store.available


async def test_fifty_concurrent_lookups_of_uncached_codes_make_one_query(
    database_url, db, make_store
):
    for i in range(25):
        await insert(db, f"KNOWN-{i}")
    store = await make_store(database_url)
    codes = [f"KNOWN-{i}" for i in range(25)] + [f"UNKNOWN-{i}" for i in range(25)]
    found = await asyncio.gather(*(store.get(code) for code in codes))
    assert [c.code if c else None for c in found] == codes[:25] + [None] * 25
    assert store.queries == 1


async def test_lookups_asked_for_while_a_query_runs_share_the_next_query(
    database_url, db, make_store
):
    await insert(db, "A")
    store = await make_store(database_url)
    first = asyncio.create_task(store.get("A"))
    await wait_until(lambda: store.queries == 1)
    later = [asyncio.create_task(store.get(f"LATE-{i}")) for i in range(20)]
    await asyncio.gather(first, *later)
    assert store.queries == 2


async def test_row_with_broken_credentials_is_logged_and_treated_as_unknown(
    database_url, db, make_store
):
    await insert(db, "BROKEN", auth_method="basic", auth_params={"username": "u"})
    store = await make_store(database_url)
    with capture_logs() as logs:
        assert await store.get("BROKEN") is None
    assert [(e["event"], e["field"]) for e in logs] == [("tracking_code_invalid", "auth_params")]


async def test_change_is_served_only_after_the_ttl_expires(database_url, db, make_store):
    clock = FakeClock()
    await insert(db, "A", "https://old.example/x")
    store = await make_store(database_url, ttl=4.0, clock=clock)
    assert (await store.get("A")).endpoint_url == "https://old.example/x"
    await db.execute("UPDATE tracking_codes SET endpoint_url = 'https://new.example/x'")
    clock.now += 3.9
    assert (await store.get("A")).endpoint_url == "https://old.example/x"
    assert store.cached("A")[0] is True
    clock.now += 0.2
    assert store.cached("A") == (False, None)
    assert (await store.get("A")).endpoint_url == "https://new.example/x"
    assert store.queries == 2


async def test_an_entry_past_half_its_ttl_is_answered_at_once_and_looked_up_again_behind(
    database_url, db, make_store
):
    clock = FakeClock()
    await insert(db, "A", "https://old.example/x")
    store = await make_store(database_url, ttl=4.0, clock=clock)
    await store.get("A")
    await db.execute("UPDATE tracking_codes SET endpoint_url = 'https://new.example/x'")
    clock.now += 1.9
    assert (await store.get("A")).endpoint_url == "https://old.example/x"
    await asyncio.sleep(0.05)
    assert store.queries == 1, "looked up again before half its ttl"
    clock.now += 0.2
    # Answered without suspending: the coroutine finishes on its first step.
    lookup = store.get("A")
    with pytest.raises(StopIteration) as answered:
        lookup.send(None)
    assert answered.value.value.endpoint_url == "https://old.example/x"
    async with asyncio.timeout(5):
        while store.queries < 2:
            await asyncio.sleep(0.01)
    clock.now += 3.0  # 5.1 s after the first lookup, 3.0 s after the one behind the answer
    assert store.cached("A")[0] is True
    assert (await store.get("A")).endpoint_url == "https://new.example/x"


async def test_committed_change_is_visible_within_five_seconds(database_url, db, make_store):
    await insert(db, "A", "https://old.example/x")
    store = await make_store(database_url, ttl=4.0)
    await store.get("A")
    await db.execute("UPDATE tracking_codes SET active = false")
    committed = time.monotonic()
    while (await store.get("A")).active:
        assert time.monotonic() - committed < 5.0, "change not visible 5 s after commit"
        await asyncio.sleep(0.05)


async def test_cached_codes_keep_working_while_postgres_is_unreachable(
    database_url, db, proxy, make_store
):
    clock = FakeClock()
    await insert(db, "A", "https://old.example/x")
    store = await make_store(
        through(proxy, database_url), clock=clock, retry_initial=0.05, retry_max=0.2
    )
    assert (await store.get("A")).endpoint_url == "https://old.example/x"
    await proxy.stop()
    clock.now += 60  # far past the TTL: the entry is stale
    with capture_logs() as logs:
        for _ in range(3):
            code = await asyncio.wait_for(store.get("A"), timeout=10)
            assert code.endpoint_url == "https://old.example/x"
        assert not store.available
        await db.execute("UPDATE tracking_codes SET endpoint_url = 'https://new.example/x'")
        await proxy.start()
        clock.now += 60
        await wait_until(lambda: store.available, timeout=10)
        refreshed = await asyncio.wait_for(store.get("A"), timeout=10)
    assert refreshed.endpoint_url == "https://new.example/x"
    events = [e["event"] for e in logs if e["event"].startswith("tracking_store_")]
    assert events == ["tracking_store_unavailable", "tracking_store_recovered"]
    assert PASSWORD_IN_DSN not in repr(logs)


async def test_uncached_lookup_waits_for_postgres_and_completes_when_it_returns(
    database_url, db, proxy, make_store
):
    await insert(db, "B")
    await proxy.stop()
    store = await make_store(through(proxy, database_url), retry_initial=0.05, retry_max=0.2)
    with capture_logs() as logs:
        lookup = asyncio.create_task(store.get("B"))
        await wait_until(lambda: store.queries >= 4)  # tried, and tried again, while down
        assert not lookup.done()
        await proxy.start()
        code = await asyncio.wait_for(lookup, timeout=10)
    assert code is not None
    assert code.code == "B"
    unavailable = [e for e in logs if e["event"] == "tracking_store_unavailable"]
    assert len(unavailable) == 1
    assert unavailable[0]["error"] == "ConnectionRefusedError"
    assert [e["event"] for e in logs if e["event"] == "tracking_store_recovered"] == [
        "tracking_store_recovered"
    ]
    assert PASSWORD_IN_DSN not in repr(logs)


async def test_closing_the_store_ends_waiting_lookups_with_store_unavailable(
    database_url, proxy, make_store
):
    await proxy.stop()
    store = await make_store(through(proxy, database_url), retry_initial=0.05, retry_max=0.2)
    lookup = asyncio.create_task(store.get("B"))
    await wait_until(lambda: store.queries >= 1)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await lookup
