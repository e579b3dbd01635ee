"""``itep-webhooks tracking-codes ...`` against the real Postgres: the commands round-trip, bad
input is refused naming the field, and no credential is ever printed (but a generated secret,
once)."""

from __future__ import annotations

import argparse
import io

import pytest

from consumer.admin import tracking_codes as tracking_admin
from consumer.delivery.webhook import sign
from consumer.tracking_codes import AuthMethod
from consumer.tracking_store import TrackingCodeStore

pytestmark = pytest.mark.integration

PASSWORD = "pw-Secret-1"
TOKEN = "tok-Secret-2"
HEADER_VALUE = "hdr-Secret-3"
QUERY_VALUE = "qry-Secret-4"
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CREDENTIALS = (PASSWORD, TOKEN, HEADER_VALUE, QUERY_VALUE, SIGNING_SECRET)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="itep-webhooks")
    commands = parser.add_subparsers(dest="command", required=True)
    tracking_admin.register(commands)
    return parser.parse_args(argv)


@pytest.fixture
def cli(database_url, capsys):
    """Run one ``tracking-codes`` command line; return (status, stdout, stderr)."""

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # only this command's output
        status = await tracking_admin.run(parse(["tracking-codes", *argv]), database_url)
        out, err = capsys.readouterr()
        return status, out, err

    return run


async def test_add_show_list_update_disable_enable_round_trip(cli, db, database_url):
    status, out, _ = await cli(
        "add", "ACME-UNI", "--url", "https://hooks.example.edu/itep", "--extra", "campus=north"
    )
    assert (status, out.splitlines()[0]) == (0, "added ACME-UNI")

    status, out, _ = await cli("show", "ACME-UNI")
    assert status == 0
    assert "endpoint_url      https://hooks.example.edu/itep" in out
    assert "auth_method       none" in out
    assert "extra_fields      campus=north" in out
    assert "signing_secret    unset" in out
    assert "paused            no" in out

    status, out, _ = await cli("list")
    assert status == 0
    assert out.splitlines()[0].split() == [
        "CODE", "ACTIVE", "PAUSED", "AUTH", "SIGNED", "ON_FINISHED", "ENDPOINT"
    ]  # fmt: skip
    assert out.splitlines()[1].split() == [
        "ACME-UNI", "yes", "no", "none", "no", "no", "https://hooks.example.edu/itep"
    ]  # fmt: skip

    status, out, _ = await cli(
        "update", "ACME-UNI", "--auth", "bearer", "--token", TOKEN, "--call-on-finished"
    )
    assert (status, out.splitlines()[0]) == (0, "updated ACME-UNI")

    status, out, _ = await cli("disable", "ACME-UNI")
    assert (status, out) == (0, "disabled ACME-UNI\n")
    assert (await cli("list"))[1] == "no active tracking codes\n"
    assert "ACME-UNI" in (await cli("list", "--all"))[1]

    status, out, _ = await cli("enable", "ACME-UNI")
    assert (status, out) == (0, "enabled ACME-UNI\n")

    row = await db.fetchrow("SELECT * FROM tracking_codes WHERE code = 'ACME-UNI'")
    assert row["auth_method"] == "bearer"
    assert row["auth_params"] == {"token": TOKEN}
    assert row["extra_fields"] == {"campus": "north"}
    assert row["call_on_finished"] is True
    assert row["active"] is True

    store = TrackingCodeStore(database_url)
    await store.start()
    try:
        code = await store.get("ACME-UNI")
    finally:
        await store.close()
    assert code is not None
    assert code.auth_method is AuthMethod.BEARER


async def test_no_command_output_contains_a_credential(cli):
    outputs: list[str] = []
    for argv in (
        ["add", "BASIC", "--url", "https://h.example/a?key=" + QUERY_VALUE, "--auth", "basic",
         "--username", "acme", "--password", PASSWORD, "--signing-secret", SIGNING_SECRET],
        ["add", "BEARER", "--url", "https://h.example/b", "--auth", "bearer", "--token", TOKEN],
        ["add", "HEADER", "--url", "https://h.example/c", "--auth", "header",
         "--header-name", "X-Api-Key", "--header-value", HEADER_VALUE],
        ["add", "QUERY", "--url", "https://h.example/d", "--auth", "query",
         "--query-param", "key=" + QUERY_VALUE],
        ["update", "BASIC", "--password", PASSWORD + "-new"],
        ["update", "BEARER", "--token", TOKEN],
        ["list", "--all"],
        *(["show", code] for code in ("BASIC", "BEARER", "HEADER", "QUERY")),
    ):  # fmt: skip
        status, out, err = await cli(*argv)
        assert status == 0, err
        outputs.append(out + err)
    printed = "\n".join(outputs)
    for credential in CREDENTIALS:
        assert credential not in printed
    assert "username=***, password=***" in printed
    assert "name=X-Api-Key, value=***" in printed
    assert "params: key=***" in printed
    assert "https://h.example/a?key=***" in printed
    assert "signing_secret    set" in printed


async def test_generated_secret_is_printed_once_and_signs(cli, db):
    status, out, _ = await cli("add", "SIGNED", "--url", "https://h.example/", "--generate-secret")
    assert status == 0
    stored = await db.fetchval("SELECT signing_secret FROM tracking_codes WHERE code = 'SIGNED'")
    assert out.count(stored) == 1
    assert sign(stored, "id", 1, b"body").startswith("v1,")
    _, shown, _ = await cli("show", "SIGNED")
    assert stored not in shown
    assert "signing_secret    set" in shown


async def test_update_of_one_credential_keeps_the_others(cli, db):
    await cli("add", "A", "--url", "https://h.example/", "--auth", "basic",
              "--username", "acme", "--password", "old")  # fmt: skip
    status, _, err = await cli("update", "A", "--password", "new")
    assert status == 0, err
    params = await db.fetchval("SELECT auth_params FROM tracking_codes WHERE code = 'A'")
    assert params == {"username": "acme", "password": "new"}


async def test_credential_dash_reads_the_value_from_stdin(cli, db, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    status, out, _ = await cli("add", "A", "--url", "https://h.example/", "--auth", "basic",
                               "--username", "acme", "--password", "-")  # fmt: skip
    assert status == 0
    params = await db.fetchval("SELECT auth_params FROM tracking_codes WHERE code = 'A'")
    assert params["password"] == PASSWORD
    assert PASSWORD not in out


async def test_update_can_remove_the_signing_secret_and_the_extra_fields(cli, db):
    await cli("add", "A", "--url", "https://h.example/", "--signing-secret", SIGNING_SECRET,
              "--extra", "k=v")  # fmt: skip
    status, _, err = await cli("update", "A", "--remove-signing-secret", "--clear-extra")
    assert status == 0, err
    row = await db.fetchrow("SELECT signing_secret, extra_fields FROM tracking_codes")
    assert (row["signing_secret"], row["extra_fields"]) == (None, {})


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--url", "ftp://h.example/"], "endpoint_url"),
        (["--url", "https://u:p@h.example/"], "endpoint_url"),
        (["--url", "https://h.example/", "--auth", "basic", "--token", TOKEN], "--token"),
        (["--url", "https://h.example/", "--auth", "basic", "--username", "u"], "auth_params"),
        (["--url", "https://h.example/", "--extra", "data=x"], "extra_fields"),
        (["--url", "https://h.example/", "--signing-secret", "plain"], "signing_secret"),
    ],
)
async def test_invalid_add_is_refused_naming_the_field_and_writes_nothing(cli, db, argv, field):
    status, out, err = await cli("add", "BAD", *argv)
    assert status == 2
    assert out == ""
    assert err.startswith(f"tracking-codes: {field}: ")
    assert err.count("\n") == 1
    assert TOKEN not in err
    assert await db.fetchval("SELECT count(*) FROM tracking_codes") == 0


async def test_invalid_update_is_refused_and_leaves_the_row_alone(cli, db):
    await cli("add", "A", "--url", "https://h.example/")
    status, _, err = await cli("update", "A", "--url", "mailto:x@h.example")
    assert status == 2
    assert err.startswith("tracking-codes: endpoint_url: ")
    assert await db.fetchval("SELECT endpoint_url FROM tracking_codes") == "https://h.example/"


async def test_adding_an_existing_code_is_refused(cli):
    await cli("add", "A", "--url", "https://h.example/")
    status, _, err = await cli("add", "A", "--url", "https://other.example/")
    assert status == 1
    assert "already exists" in err


@pytest.mark.parametrize("command", ["show", "update", "disable", "enable", "pause", "resume"])
async def test_unknown_code_is_reported_with_status_1(cli, command):
    status, out, err = await cli(command, "NOPE")
    assert (status, out) == (1, "")
    assert err == "tracking-codes: no tracking code 'NOPE'\n"


async def test_unreachable_database_is_one_line_without_the_password(capsys):
    args = parse(["tracking-codes", "list"])
    status = await tracking_admin.run(args, "postgresql://postgres:hunter2@127.0.0.1:1/x")
    _, err = capsys.readouterr()
    assert status == 1
    assert err == "tracking-codes: cannot reach the database (ConnectionRefusedError)\n"


async def insert_delivery(db, code: str, state: str, number: int) -> None:
    await db.execute(
        """
        INSERT INTO scheduled_deliveries (event_id, test_id, tracking_code, trigger, event,
            source_topic, source_partition, source_offset, state, due_at)
        VALUES ($1, $2, $3, 'completed', $4, 'exam-events', 0, $5, $6, now())
        """,
        f"evt-{code}-{number}",
        f"T{number}",
        code,
        b"{}",
        number,
        state,
    )


async def test_pause_then_resume_reports_the_pending_deliveries_released(cli, db):
    """``resume`` counts the code's pending deliveries, not its dead ones nor other codes'."""
    await cli("add", "A", "--url", "https://h.example/")
    for number, (code, state) in enumerate(
        [("A", "pending"), ("A", "pending"), ("A", "dead"), ("B", "pending")]
    ):
        await insert_delivery(db, code, state, number)

    assert await cli("pause", "A") == (0, "paused A\n", "")
    assert await db.fetchval("SELECT paused FROM tracking_codes WHERE code = 'A'") is True
    assert "paused            yes" in (await cli("show", "A"))[1]
    assert (await cli("list"))[1].splitlines()[1].split()[:3] == ["A", "yes", "yes"]

    assert await cli("resume", "A") == (0, "resumed A\n2 pending deliveries released\n", "")
    assert await db.fetchval("SELECT paused FROM tracking_codes WHERE code = 'A'") is False


async def test_pause_leaves_the_other_settings_and_update_keeps_the_pause(cli, db):
    await cli("add", "A", "--url", "https://h.example/", "--inactive")
    await cli("pause", "A")
    status, out, err = await cli("update", "A", "--url", "https://other.example/")
    assert status == 0, err
    assert "paused            yes" in out
    row = await db.fetchrow("SELECT active, paused, endpoint_url FROM tracking_codes")
    assert tuple(row) == (False, True, "https://other.example/")


async def test_pausing_a_paused_code_says_so_and_changes_nothing(cli, db):
    await cli("add", "A", "--url", "https://h.example/")
    await cli("pause", "A")
    before = await db.fetchval("SELECT updated_at FROM tracking_codes")
    assert await cli("pause", "A") == (0, "A is already paused\n", "")
    assert await db.fetchval("SELECT updated_at FROM tracking_codes") == before


async def test_resuming_a_code_that_is_not_paused_says_so(cli, db):
    await cli("add", "A", "--url", "https://h.example/")
    assert await cli("resume", "A") == (0, "A is not paused\n", "")
    assert await db.fetchval("SELECT paused FROM tracking_codes") is False


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_pause_and_resume_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["tracking-codes", command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: itep-webhooks tracking-codes {command} [-h] code" in capsys.readouterr().out
