"""``itep-webhooks tracking-codes add|list|show|update|disable|enable|pause|resume``: partners.

``register(subparsers)`` adds the ``tracking-codes`` parser; its subcommand lands in
``args.tc_command`` and ``await run(args, dsn)`` carries it out, returning the exit status:
0 done, 1 no such code / already exists / database unreachable, 2 invalid input (one line on
stderr naming the field).

Output never shows credentials: auth parameters are listed by name with masked values, the
signing secret as ``set`` or ``unset``, query-string values of the endpoint URL masked. The one
exception is ``--generate-secret``, which prints the new secret once so that it can be handed to
the partner. A credential flag given ``-`` reads its value from a line of stdin, which keeps it
out of the shell history and the process list.

``pause`` holds a code's webhooks without refusing them: its deliveries wait in
``scheduled_deliveries`` until ``resume`` releases them (``disable`` instead skips them for good).
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg

from consumer.errors import InvalidTrackingCode
from consumer.tracking_codes import AuthMethod, TrackingCode, validate_tracking_code
from consumer.tracking_store import init_connection

MASK: Final = "***"

# Credential flags (their argparse dest) -> the auth_params key each fills, per method.
_CREDENTIAL_FLAGS: Final[Mapping[AuthMethod, Mapping[str, str]]] = {
    AuthMethod.NONE: {},
    AuthMethod.BASIC: {"username": "username", "password": "password"},
    AuthMethod.BEARER: {"token": "token"},
    AuthMethod.HEADER: {"header_name": "name", "header_value": "value"},
    AuthMethod.QUERY: {"query_param": "params"},
}
_ALL_CREDENTIAL_FLAGS: Final = ("username", "password", "token", "header_name", "header_value")
_SECRET_FLAGS: Final = frozenset({"password", "token", "header_value"})
# auth_params values that are safe to show: they name something, they are not a secret.
_SHOWN_PARAMS: Final[Mapping[AuthMethod, frozenset[str]]] = {
    AuthMethod.HEADER: frozenset({"name"}),
}


# ------------------------------------------------------------------------------------ parsing


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected key=value")  # the text may be a secret
    return key, value


def _add_settings_flags(parser: argparse.ArgumentParser, *, for_update: bool) -> None:
    parser.add_argument("--url", required=not for_update, help="the http(s) endpoint")
    parser.add_argument(
        "--auth", choices=[m.value for m in AuthMethod], help="auth method (add: default none)"
    )
    creds = parser.add_argument_group("credentials ('-' reads the value from stdin)")
    creds.add_argument("--username", help="basic")
    creds.add_argument("--password", help="basic")
    creds.add_argument("--token", help="bearer")
    creds.add_argument("--header-name", help="header: e.g. X-Api-Key")
    creds.add_argument("--header-value", help="header")
    creds.add_argument(
        "--query-param", type=_pair, action="append", metavar="K=V", help="query (repeatable)"
    )
    parser.add_argument(
        "--extra",
        type=_pair,
        action="append",
        metavar="K=V",
        help="form field posted beside data (repeatable)"
        + ("; replaces the current ones" if for_update else ""),
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--signing-secret", metavar="whsec_...", help="sign webhooks with this")
    secret.add_argument(
        "--generate-secret", action="store_true", help="sign with a new secret, printed once"
    )
    if for_update:
        parser.add_argument("--clear-extra", action="store_true", help="remove every extra field")
        secret.add_argument(
            "--remove-signing-secret", action="store_true", help="stop signing webhooks"
        )
        parser.add_argument(
            "--call-on-finished",
            action=argparse.BooleanOptionalAction,
            help="also call when an exam becomes Finished",
        )
        state = parser.add_mutually_exclusive_group()
        state.add_argument("--active", dest="active", action="store_true", default=None)
        state.add_argument("--inactive", dest="active", action="store_false")
    else:
        parser.add_argument(
            "--call-on-finished",
            action="store_true",
            help="also call when an exam becomes Finished",
        )
        parser.add_argument("--inactive", action="store_true", help="add it disabled")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tracking-codes`` and its subcommands; the subcommand is ``args.tc_command``."""
    parser = subparsers.add_parser(
        "tracking-codes",
        help="add, list, show, update, disable, enable, pause or resume tracking codes",
    )
    commands = parser.add_subparsers(dest="tc_command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="add a tracking code")
    add.add_argument("code")
    _add_settings_flags(add, for_update=False)

    update = commands.add_parser("update", help="change some settings of a tracking code")
    update.add_argument("code")
    _add_settings_flags(update, for_update=True)

    listing = commands.add_parser("list", help="list active tracking codes")
    listing.add_argument("--all", action="store_true", help="inactive ones too")

    for name, text in (
        ("show", "show one tracking code, credentials masked"),
        ("disable", "stop webhooks for a tracking code (events get outcome skipped)"),
        ("enable", "turn webhooks back on for a disabled tracking code"),
        ("pause", "hold webhooks for a tracking code (its deliveries wait until resume)"),
        ("resume", "release the held webhooks of a paused tracking code"),
    ):
        commands.add_parser(name, help=text).add_argument("code")


# ----------------------------------------------------------------------------------- building


def _secret_value(value: str) -> str:
    return sys.stdin.readline().rstrip("\r\n") if value == "-" else value


def _given_credentials(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for flag in _ALL_CREDENTIAL_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            given[flag] = _secret_value(value) if flag in _SECRET_FLAGS else value
    if args.query_param:
        given["query_param"] = dict(args.query_param)
    return given


def _auth_params(
    method: AuthMethod, given: Mapping[str, Any], base: Mapping[str, Any]
) -> dict[str, Any]:
    """``base`` with the credential flags of ``given`` applied; each must belong to ``method``."""
    accepted = _CREDENTIAL_FLAGS[method]
    for flag in given:
        if flag not in accepted:
            option = "--" + flag.replace("_", "-")
            raise InvalidTrackingCode(option, f"is not used by auth method {method}")
    params = dict(base)
    for flag, value in given.items():
        params[accepted[flag]] = value
    return params


def _signing_secret(args: argparse.Namespace, current: str | None) -> tuple[str | None, bool]:
    """The secret to store and whether it was generated just now."""
    if args.generate_secret:
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii"), True
    if args.signing_secret is not None:
        return _secret_value(args.signing_secret), False
    if getattr(args, "remove_signing_secret", False):
        return None, False
    return current, False


def _from_add(args: argparse.Namespace) -> tuple[TrackingCode, bool]:
    method = AuthMethod(args.auth or AuthMethod.NONE)
    secret, generated = _signing_secret(args, None)
    code = TrackingCode(
        code=args.code,
        endpoint_url=args.url,
        auth_method=method,
        auth_params=_auth_params(method, _given_credentials(args), {}),
        extra_fields=dict(args.extra or ()),
        signing_secret=secret,
        call_on_finished=args.call_on_finished,
        active=not args.inactive,
    )
    return validate_tracking_code(code), generated


def _from_update(args: argparse.Namespace, current: TrackingCode) -> tuple[TrackingCode, bool]:
    method = AuthMethod(args.auth) if args.auth else current.auth_method
    # The same method keeps the parameters not given again (a new password keeps the username).
    base = current.auth_params if method is current.auth_method else {}
    extra = {} if args.clear_extra else dict(current.extra_fields)
    if args.extra:
        extra = dict(args.extra)
    secret, generated = _signing_secret(args, current.signing_secret)
    code = TrackingCode(
        code=current.code,
        endpoint_url=args.url or current.endpoint_url,
        auth_method=method,
        auth_params=_auth_params(method, _given_credentials(args), base),
        extra_fields=extra,
        signing_secret=secret,
        call_on_finished=(
            current.call_on_finished if args.call_on_finished is None else args.call_on_finished
        ),
        active=current.active if args.active is None else args.active,
        paused=current.paused,
    )
    return validate_tracking_code(code), generated


def _row_value(row: asyncpg.Record) -> TrackingCode:
    """A row as stored, unvalidated, so that a broken row can still be shown and repaired."""
    return TrackingCode(
        code=row["code"],
        endpoint_url=row["endpoint_url"],
        auth_method=AuthMethod(row["auth_method"]),
        auth_params=row["auth_params"],
        extra_fields=row["extra_fields"],
        signing_secret=row["signing_secret"],
        call_on_finished=row["call_on_finished"],
        active=row["active"],
        paused=row["paused"],
    )


# ----------------------------------------------------------------------------------- printing


def display_url(url: str) -> str:
    """The endpoint URL with every query-string value masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    query = "&".join(f"{key}={MASK}" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(query=query, fragment=""))


def describe_auth(code: TrackingCode) -> str:
    """Which auth parameters are set, their values masked (a header's name is shown)."""
    params = code.auth_params
    if code.auth_method is AuthMethod.QUERY:
        inner = params.get("params")
        keys = sorted(inner) if isinstance(inner, Mapping) else []
        return "params: " + (", ".join(f"{key}={MASK}" for key in keys) or "(none)")
    shown = _SHOWN_PARAMS.get(code.auth_method, frozenset())
    usual = [key for key in _CREDENTIAL_FLAGS[code.auth_method].values() if key in params]
    keys = usual + sorted(key for key in params if key not in usual)
    items = [f"{key}={params[key] if key in shown else MASK}" for key in keys]
    return ", ".join(items) or "-"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _show_lines(code: TrackingCode, row: asyncpg.Record) -> list[str]:
    extra = ", ".join(f"{key}={value}" for key, value in sorted(code.extra_fields.items()))
    fields: Sequence[tuple[str, str]] = (
        ("code", code.code),
        ("endpoint_url", display_url(code.endpoint_url)),
        ("auth_method", code.auth_method.value),
        ("auth_params", describe_auth(code)),
        ("extra_fields", extra or "-"),
        ("signing_secret", "set" if code.signing_secret else "unset"),
        ("call_on_finished", _yes(code.call_on_finished)),
        ("active", _yes(code.active)),
        ("paused", _yes(code.paused)),
        ("created_at", row["created_at"].isoformat(timespec="seconds")),
        ("updated_at", row["updated_at"].isoformat(timespec="seconds")),
    )
    return [f"{name:<17} {value}" for name, value in fields]


def _print_code(code: TrackingCode, row: asyncpg.Record) -> None:
    print("\n".join(_show_lines(code, row)))


def _print_generated(secret: str | None) -> None:
    print(f"new signing secret (shown only now; hand it to the partner): {secret}")


def _fail(message: str, status: int) -> int:
    print(f"tracking-codes: {message}", file=sys.stderr)
    return status


# ----------------------------------------------------------------------------------- commands

_SELECT_ONE: Final = """
SELECT code, endpoint_url, auth_method, auth_params, extra_fields, signing_secret,
       call_on_finished, active, paused, created_at, updated_at
FROM tracking_codes
WHERE code = $1
"""
_SELECT_ALL: Final = """
SELECT code, endpoint_url, auth_method, auth_params, extra_fields, signing_secret,
       call_on_finished, active, paused
FROM tracking_codes
WHERE active OR $1
ORDER BY code
"""
_INSERT: Final = """
INSERT INTO tracking_codes (code, endpoint_url, auth_method, auth_params, extra_fields,
                            signing_secret, call_on_finished, active)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING created_at, updated_at
"""
_UPDATE: Final = """
UPDATE tracking_codes
SET endpoint_url = $2, auth_method = $3, auth_params = $4, extra_fields = $5,
    signing_secret = $6, call_on_finished = $7, active = $8
WHERE code = $1
RETURNING created_at, updated_at
"""


def _values(code: TrackingCode) -> tuple[Any, ...]:
    return (
        code.code,
        code.endpoint_url,
        code.auth_method.value,
        dict(code.auth_params),
        dict(code.extra_fields),
        code.signing_secret,
        code.call_on_finished,
        code.active,
    )


async def _add(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    code, generated = _from_add(args)
    try:
        row = await conn.fetchrow(_INSERT, *_values(code))
    except asyncpg.UniqueViolationError:
        return _fail(f"{code.code!r} already exists; use update", 1)
    assert row is not None  # INSERT ... RETURNING yields the row
    print(f"added {code.code}")
    _print_code(code, row)
    if generated:
        _print_generated(code.signing_secret)
    return 0


async def _update(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    async with conn.transaction():
        current = await conn.fetchrow(_SELECT_ONE + " FOR UPDATE", args.code)
        if current is None:
            return _fail(f"no tracking code {args.code!r}", 1)
        code, generated = _from_update(args, _row_value(current))
        row = await conn.fetchrow(_UPDATE, *_values(code))
    assert row is not None  # the row is locked above
    print(f"updated {code.code}")
    _print_code(code, row)
    if generated:
        _print_generated(code.signing_secret)
    return 0


async def _show(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    row = await conn.fetchrow(_SELECT_ONE, args.code)
    if row is None:
        return _fail(f"no tracking code {args.code!r}", 1)
    _print_code(_row_value(row), row)
    return 0


async def _list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    rows = await conn.fetch(_SELECT_ALL, args.all)
    if not rows:
        print("no tracking codes" if args.all else "no active tracking codes")
        return 0
    table = [("CODE", "ACTIVE", "PAUSED", "AUTH", "SIGNED", "ON_FINISHED", "ENDPOINT")]
    for row in rows:
        code = _row_value(row)
        table.append(
            (
                code.code,
                _yes(code.active),
                _yes(code.paused),
                code.auth_method.value,
                _yes(code.signing_secret is not None),
                _yes(code.call_on_finished),
                display_url(code.endpoint_url),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]))
    return 0


async def _set_active(conn: asyncpg.Connection, code: str, *, active: bool) -> int:
    found = await conn.fetchval(
        "UPDATE tracking_codes SET active = $2 WHERE code = $1 RETURNING code", code, active
    )
    if found is None:
        return _fail(f"no tracking code {code!r}", 1)
    print(f"{'enabled' if active else 'disabled'} {code}")
    return 0


async def _disable(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    return await _set_active(conn, args.code, active=False)


async def _enable(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    return await _set_active(conn, args.code, active=True)


_LOCK_PAUSED: Final = "SELECT paused FROM tracking_codes WHERE code = $1 FOR UPDATE"
_SET_PAUSED: Final = "UPDATE tracking_codes SET paused = $2 WHERE code = $1"
_COUNT_PENDING: Final = (
    "SELECT count(*) FROM scheduled_deliveries WHERE tracking_code = $1 AND state = 'pending'"
)


async def _set_paused(conn: asyncpg.Connection, code: str, *, paused: bool) -> int | None:
    """Set ``paused``; the exit status if that is all there is to say, else ``None``."""
    was = await conn.fetchval(_LOCK_PAUSED, code)
    if was is None:
        return _fail(f"no tracking code {code!r}", 1)
    if was == paused:
        print(f"{code} is {'already paused' if paused else 'not paused'}")
        return 0
    await conn.execute(_SET_PAUSED, code, paused)
    return None


async def _pause(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    async with conn.transaction():
        status = await _set_paused(conn, args.code, paused=True)
    if status is not None:
        return status
    print(f"paused {args.code}")
    return 0


async def _resume(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    async with conn.transaction():
        status = await _set_paused(conn, args.code, paused=False)
        if status is not None:
            return status
        # Counted while the row is still locked: what waited when the pause ended.
        pending = await conn.fetchval(_COUNT_PENDING, args.code)
    print(f"resumed {args.code}")
    print(f"{pending} pending deliver{'y' if pending == 1 else 'ies'} released")
    return 0


_COMMANDS: Final[
    Mapping[str, Callable[[asyncpg.Connection, argparse.Namespace], Awaitable[int]]]
] = {
    "add": _add,
    "update": _update,
    "show": _show,
    "list": _list,
    "disable": _disable,
    "enable": _enable,
    "pause": _pause,
    "resume": _resume,
}


async def run(args: argparse.Namespace, dsn: str) -> int:
    """Carry out ``args.tc_command`` against the database at ``dsn``; return the exit status."""
    command = _COMMANDS[args.tc_command]
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(f"cannot reach the database ({exc.__class__.__name__})", 1)
    try:
        await init_connection(conn)
        return await command(conn, args)
    except InvalidTrackingCode as exc:
        return _fail(f"{exc.field}: {exc.rule}", 2)
    except asyncpg.CheckViolationError as exc:
        return _fail(f"refused by the database (constraint {exc.constraint_name})", 2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(f"database error ({exc.__class__.__name__})", 1)
    finally:
        await conn.close()
