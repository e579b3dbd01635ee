"""The schedule's rules as Postgres keeps them: claims, order per test, leases, pause."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from consumer.delivery.schedule import (
    _CLAIM_PLAN,
    DEAD,
    PENDING,
    NewDelivery,
    Progress,
    ScheduledDelivery,
    ScheduleStore,
)
from tests.integration.harness import add_tracking_code

pytestmark = pytest.mark.integration


def row(test_id: str, *, due_in: float = -1.0, code: str = "C", **changes: object) -> NewDelivery:
    values: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "test_id": test_id,
        "tracking_code": code,
        "trigger": "completed",
        "event": b"{}",
        "source_topic": "exam-events",
        "source_partition": 0,
        "source_offset": 0,
        "state": PENDING,
        "progress": Progress(1, 1, str(changes.pop("reason", "http_503"))),
        "due_at": datetime.now(UTC) + timedelta(seconds=due_in),
    }
    values.update(changes)
    return NewDelivery(**values)  # type: ignore[arg-type]


@pytest.fixture
async def schedule(database_url: str) -> AsyncIterator[ScheduleStore]:
    store = ScheduleStore(database_url, owner="test-a")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def test_only_due_heads_of_each_test_are_claimed_earliest_first(
    schedule: ScheduleStore,
) -> None:
    await schedule.add(row("A", due_in=-5))
    await schedule.add(row("A", due_in=-10))  # later in line, though due earlier
    await schedule.add(row("B", due_in=-7))
    await schedule.add(row("C", due_in=60))  # not due
    claimed = await schedule.claim(10, lease=30)
    assert [(c.test_id, c.id) for c in claimed] == [("B", 3), ("A", 1)]


async def test_a_claimed_row_is_not_claimed_again_while_leased(schedule: ScheduleStore) -> None:
    await schedule.add(row("A"))
    assert len(await schedule.claim(10, lease=30)) == 1
    assert await schedule.claim(10, lease=30) == []


async def test_a_lease_that_runs_out_makes_the_row_claimable_again(
    schedule: ScheduleStore,
) -> None:
    await schedule.add(row("A"))
    [first] = await schedule.claim(10, lease=0.2)
    await asyncio.sleep(0.4)
    [again] = await schedule.claim(10, lease=30)
    assert again.id == first.id


async def test_a_renewed_lease_keeps_the_row(schedule: ScheduleStore) -> None:
    await schedule.add(row("A"))
    [first] = await schedule.claim(10, lease=0.5)
    await schedule.renew([first.id], 30)
    await asyncio.sleep(0.7)
    assert await schedule.claim(10, lease=30) == []


async def test_concurrent_claims_never_share_a_row(database_url: str) -> None:
    """Two instances claiming at once split the due rows between them."""
    a = ScheduleStore(database_url, owner="a")
    b = ScheduleStore(database_url, owner="b")
    await a.start()
    await b.start()
    try:
        for i in range(300):
            await a.add(row(f"T{i}"))
        claims_a, claims_b = [], []
        for _ in range(10):
            got_a, got_b = await asyncio.gather(a.claim(20, lease=30), b.claim(20, lease=30))
            claims_a += [c.id for c in got_a]
            claims_b += [c.id for c in got_b]
    finally:
        await a.close()
        await b.close()
    assert not set(claims_a) & set(claims_b)
    assert len(claims_a) + len(claims_b) == 300
    assert len(set(claims_a + claims_b)) == 300


async def test_a_later_row_waits_while_the_head_is_leased_elsewhere(
    schedule: ScheduleStore,
) -> None:
    await schedule.add(row("A"))
    await schedule.add(row("A"))
    [head] = await schedule.claim(10, lease=30)
    assert await schedule.claim(10, lease=30) == [], "the second waits for the first"
    assert await schedule.remove(head.id) is True, "another row of the test is pending"
    [second] = await schedule.claim(10, lease=30)
    assert second.id == head.id + 1
    assert await schedule.remove(second.id) is False


async def test_a_row_behind_an_earlier_one_is_not_due_until_that_one_is_removed(
    schedule: ScheduleStore, db: asyncpg.Connection
) -> None:
    await schedule.add(row("A"))
    await schedule.add(row("A", behind=True))
    assert (
        await db.fetchval("SELECT count(*) FROM scheduled_deliveries WHERE due_at = 'infinity'")
        == 1
    )
    [head] = await schedule.claim(10, lease=30)
    assert await schedule.remove(head.id) is True
    [second] = await schedule.claim(10, lease=30)
    assert second.id == head.id + 1
    assert second.due_at <= datetime.now(UTC)


async def test_a_row_behind_a_head_that_fails_for_good_is_due_at_once(
    schedule: ScheduleStore,
) -> None:
    await schedule.add(row("A"))
    await schedule.add(row("A", behind=True))
    [head] = await schedule.claim(10, lease=30)
    assert await schedule.kill(head.id, Progress(7, 7, "http_500", 500)) is True
    [second] = await schedule.claim(10, lease=30)
    assert second.id == head.id + 1


async def test_a_row_behind_nothing_pending_is_due_at_once(schedule: ScheduleStore) -> None:
    """The consume loop's list of waiting tests may be stale: the insert checks."""
    await schedule.add(row("A", behind=True))
    assert len(await schedule.claim(10, lease=30)) == 1


async def test_a_row_left_behind_a_settled_one_is_made_due_by_free_behind(
    schedule: ScheduleStore, db: asyncpg.Connection
) -> None:
    """Added while its earlier row was being removed, neither statement seeing the other."""
    await schedule.add(row("A"))
    await db.execute("UPDATE scheduled_deliveries SET due_at = 'infinity'")
    await schedule.add(row("B"))
    await schedule.add(row("B", behind=True))  # still behind its head: stays
    assert [c.test_id for c in await schedule.claim(10, lease=300)] == ["B"]
    assert await schedule.free_behind() == 1
    assert [c.test_id for c in await schedule.claim(10, lease=30)] == ["A"]


async def test_hold_due_holds_what_a_claim_would_take_and_uses_a_step(
    schedule: ScheduleStore, db: asyncpg.Connection, database_url: str
) -> None:
    """A breaker's bulk hold takes the code's rows a claim would take now, except those on
    the last step and those ``plan`` declines; each held row uses a step and is due when
    ``plan`` says. Leased rows, rows due later, behind another, of a paused code or of
    another code are left as they are."""
    await schedule.add(row("LEASED", code="BAD"))
    [leased] = await schedule.claim(10, lease=300)
    await schedule.add(row("HELD", code="BAD", progress=Progress(1, 1, "http_503", 503)))
    await schedule.add(row("HELD", code="BAD", behind=True))
    await schedule.add(row("DECLINED", code="BAD"))
    await schedule.add(row("LAST", code="BAD", progress=Progress(3, 3, "http_503")))
    await schedule.add(row("LATER", code="BAD", due_in=3600))
    await schedule.add(row("OTHER", code="GOOD"))
    await add_tracking_code(database_url, "PAUSED", "https://p.example/x", paused=True)
    await schedule.add(row("PAUSED", code="PAUSED"))
    offered: list[str] = []

    def plan(rows: list[ScheduledDelivery]) -> dict[int, float]:
        offered.extend(r.test_id for r in rows)
        return {r.id: 30.0 for r in rows if r.test_id != "DECLINED"}

    held = await schedule.hold_due(
        "BAD",
        before_step=3,
        limit=100,
        reason="circuit_open",
        endpoint_host="bad.example",
        plan=plan,
    )
    assert sorted(offered) == ["DECLINED", "HELD"]
    assert [(r.test_id, r.step) for r, _ in held] == [("HELD", 1)], "the step before the hold"
    rows = await db.fetch(
        "SELECT test_id, step, reason, http_status, endpoint_host, locked_by IS NULL AS free,"
        " CASE WHEN due_at < 'infinity' THEN extract(epoch FROM due_at - now()) END AS due_in"
        " FROM scheduled_deliveries ORDER BY id"
    )
    by_test = [(r["test_id"], r["step"], r["reason"], r["endpoint_host"]) for r in rows]
    assert by_test == [
        ("LEASED", 1, "http_503", None),
        ("HELD", 2, "circuit_open", "bad.example"),
        ("HELD", 1, "http_503", None),
        ("DECLINED", 1, "http_503", None),
        ("LAST", 3, "http_503", None),
        ("LATER", 1, "http_503", None),
        ("OTHER", 1, "http_503", None),
        ("PAUSED", 1, "http_503", None),
    ]
    assert rows[1]["http_status"] is None
    assert rows[1]["free"]
    assert 29.0 <= float(rows[1]["due_in"]) <= 30.5
    assert abs((held[0][1] - datetime.now(UTC)).total_seconds() - 30.0) < 1.5
    assert rows[2]["due_in"] is None, "still behind"
    assert not rows[0]["free"], "the lease is kept"
    claimable = await schedule.claim(10, lease=30)
    assert sorted(c.test_id for c in claimable) == ["DECLINED", "LAST", "OTHER"]
    assert leased.test_id == "LEASED"


async def test_dead_rows_are_kept_and_do_not_hold_later_ones(
    schedule: ScheduleStore, db: asyncpg.Connection
) -> None:
    await schedule.add(row("A"))
    await schedule.add(row("A"))
    [head] = await schedule.claim(10, lease=30)
    assert await schedule.kill(head.id, Progress(3, 2, "retries_exhausted")) is True
    state, failed_at = await db.fetchrow(
        "SELECT state, failed_at FROM scheduled_deliveries WHERE id = $1", head.id
    )
    assert state == DEAD
    assert failed_at is not None
    assert [c.id for c in await schedule.claim(10, lease=30)] == [head.id + 1]


async def test_paused_and_excluded_codes_are_passed_over(
    schedule: ScheduleStore, database_url: str, db: asyncpg.Connection
) -> None:
    await add_tracking_code(database_url, "P", "https://p.example/x", paused=True)
    await schedule.add(row("A", code="P"))
    await schedule.add(row("B", code="BUSY"))
    await schedule.add(row("C", code="FREE"))
    claimed = await schedule.claim(10, exclude=["BUSY"], lease=30)
    assert [c.tracking_code for c in claimed] == ["FREE"]
    await db.execute("UPDATE tracking_codes SET paused = false WHERE code = 'P'")
    assert [c.tracking_code for c in await schedule.claim(10, exclude=["BUSY"], lease=30)] == ["P"]


async def test_a_second_row_for_the_same_event_is_ignored(
    schedule: ScheduleStore, db: asyncpg.Connection
) -> None:
    """An event consumed again after a crash finds its row and leaves it as it is."""
    first = row("A", reason="http_503")
    await schedule.add(first)
    await schedule.add(row("A", event_id=first.event_id, reason="endpoint_busy"))
    rows = await db.fetch("SELECT reason FROM scheduled_deliveries")
    assert [r["reason"] for r in rows] == ["http_503"]


async def test_adds_of_one_moment_share_one_insert(schedule: ScheduleStore) -> None:
    before = schedule.statements()["insert"]
    await asyncio.gather(*(schedule.add(row(f"T{i}")) for i in range(200)))
    assert schedule.statements()["insert"] - before <= 3
    assert len(await schedule.claim(500, lease=30)) == 200


async def test_removes_of_one_moment_share_one_delete_and_each_learns_about_its_test(
    schedule: ScheduleStore,
) -> None:
    for test_id in ["A", "A", "B", "C", "C"]:
        await schedule.add(row(test_id))
    heads = {c.test_id: c.id for c in await schedule.claim(10, lease=30)}
    before = schedule.statements()["remove"]
    others = await asyncio.gather(*(schedule.remove(heads[t]) for t in ["A", "B", "C"]))
    assert others == [True, False, True]
    assert schedule.statements()["remove"] - before == 1
    assert await schedule.remove(heads["B"]) is False, "a row already gone"
    assert sorted(c.test_id for c in await schedule.claim(10, lease=30)) == ["A", "C"]


async def test_reschedules_of_one_moment_share_one_update_each_with_its_own_values(
    schedule: ScheduleStore, db: asyncpg.Connection
) -> None:
    for test_id in ["A", "B"]:
        await schedule.add(row(test_id))
    claimed = {c.test_id: c.id for c in await schedule.claim(10, lease=30)}
    later = datetime.now(UTC) + timedelta(minutes=5)
    before = schedule.statements()["reschedule"]
    await asyncio.gather(
        schedule.reschedule(claimed["A"], Progress(2, 2, "http_503", 503, "a.example"), later),
        schedule.reschedule(claimed["B"], Progress(1, 2, "circuit_open"), later),
    )
    assert schedule.statements()["reschedule"] - before == 1
    rows = await db.fetch(
        "SELECT test_id, attempts, step, reason, http_status, endpoint_host, due_at, locked_by"
        " FROM scheduled_deliveries ORDER BY test_id"
    )
    assert [tuple(r.values()) for r in rows] == [
        ("A", 2, 2, "http_503", 503, "a.example", later, None),
        ("B", 1, 2, "circuit_open", None, None, later, None),
    ]


async def test_releases_of_one_moment_share_one_update(schedule: ScheduleStore) -> None:
    for test_id in ["A", "B", "C"]:
        await schedule.add(row(test_id))
    ids = [c.id for c in await schedule.claim(10, lease=300)]
    before = schedule.statements()["release"]
    await asyncio.gather(schedule.release(ids[:1]), schedule.release(ids[1:]))
    assert schedule.statements()["release"] - before == 1
    assert sorted(c.id for c in await schedule.claim(10, lease=30)) == sorted(ids)


async def test_a_nul_in_a_test_id_is_stored_replaced(schedule: ScheduleStore) -> None:
    await schedule.add(row("A\x00B"))
    [claimed] = await schedule.claim(10, lease=30)
    assert claimed.test_id == "A\ufffdB"


async def test_waiting_tests_are_read_per_partition(schedule: ScheduleStore) -> None:
    await schedule.add(row("A", source_partition=0))
    await schedule.add(row("B", source_partition=1))
    await schedule.add(row("C", source_partition=2, state=DEAD))
    await schedule.add(row("D", source_partition=1, source_topic="other"))
    found = await schedule.waiting_tests("exam-events", [0, 1, 2])
    assert found == {0: {"A"}, 1: {"B"}, 2: set()}
    assert await schedule.still_waiting(["A", "C", "Z"]) == {"A"}


async def test_stats_count_states_and_the_oldest_overdue(schedule: ScheduleStore) -> None:
    await schedule.add(row("A", due_in=-30))
    await schedule.add(row("B", due_in=60))
    await schedule.add(row("C", state=DEAD))
    stats = await schedule.stats()
    assert (stats.pending, stats.dead) == (2, 1)
    assert 29 <= stats.oldest_overdue_seconds <= 40


async def test_statistics_are_stale_once_the_schedule_outgrows_them_and_analyze_fixes_it(
    schedule: ScheduleStore,
) -> None:
    await asyncio.gather(*(schedule.add(row(f"T{i}")) for i in range(1_500)))
    await schedule.analyze()
    stats = await schedule.stats()
    assert (stats.planned_rows, stats.statistics_stale) == (1_500, False)
    await asyncio.gather(*(schedule.add(row(f"U{i}")) for i in range(1_600)))
    assert (await schedule.stats()).statistics_stale  # 3,100 rows, planned for 1,500


async def test_a_claim_walks_the_due_rows_in_order_whatever_the_statistics_say(
    database_url: str,
) -> None:
    """The claim runs with the planner's sort, bitmap and sequential scans turned off for
    its own transaction, so that stale statistics cannot make it read every due row."""
    store = ScheduleStore(database_url, owner="test-a", pool_size=1)
    await store.start()
    try:
        await store.add(row("A"))
        sent: list[str] = []
        assert store._pool is not None
        async with store._pool.acquire() as conn:  # the pool's one connection
            conn.add_query_logger(lambda record: sent.append(record.query))
        [claimed] = await store.claim(10, lease=30)
        async with store._pool.acquire() as conn:
            plan = [await conn.fetchval(f"SHOW {name}") for name in ("enable_sort",)]
    finally:
        await store.close()
    assert claimed.test_id == "A"
    assert sent[:2] == ["BEGIN;", _CLAIM_PLAN]
    assert sent[2].lstrip().startswith("WITH due AS")
    assert plan == ["on"], "the settings end with the claim's transaction"


async def test_release_all_gives_back_this_instances_leases(schedule: ScheduleStore) -> None:
    await schedule.add(row("A"))
    await schedule.claim(10, lease=300)
    await schedule.release_all()
    assert len(await schedule.claim(10, lease=30)) == 1


async def test_a_row_waiting_behind_an_earlier_one_of_its_test_is_not_overdue(
    schedule: ScheduleStore,
) -> None:
    """A later delivery of a test is due at once but cannot be claimed before the earlier
    one: only the earlier one's wait counts as overdue."""
    await schedule.add(row("A", due_in=60))
    await schedule.add(row("A", due_in=-120))
    stats = await schedule.stats()
    assert stats.pending == 2
    assert stats.oldest_overdue_seconds == 0


async def test_an_unexpected_driver_error_is_logged_and_the_add_tried_again(
    schedule: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg may raise outside its usual classes while a server restarts (a protocol
    error): the add waits and succeeds, and the insert routine keeps running."""
    real = schedule._insert_rows
    calls = 0

    async def flaky(conn: object, rows: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("protocol state lost")
        await real(conn, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(schedule, "_insert_rows", flaky)
    with capture_logs() as logs:
        await asyncio.wait_for(schedule.add(row("A")), 10)
    assert calls == 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["schedule_query_failed"]
    await asyncio.wait_for(schedule.add(row("B")), 10)
    assert len(await schedule.claim(10, lease=30)) == 2


async def test_an_instance_claims_and_counts_only_its_own_topics_deliveries(
    database_url: str,
) -> None:
    """Two deployments sharing one database each attempt only what they consumed."""
    mine = ScheduleStore(database_url, owner="mine", topic="exam-events")
    await mine.start()
    try:
        await mine.add(row("A", source_topic="exam-events"))
        await mine.add(row("B", source_topic="other-deployment-events"))
        claimed = await mine.claim(10, lease=30)
        stats = await mine.stats()
    finally:
        await mine.close()
    assert [c.test_id for c in claimed] == ["A"]
    assert stats.pending == 1
