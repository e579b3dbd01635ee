"""The tracking-code value (CONTRACT section 4) and its validation. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

from consumer.errors import InvalidTrackingCode


class AuthMethod(StrEnum):
    NONE = "none"
    BASIC = "basic"
    BEARER = "bearer"
    HEADER = "header"
    QUERY = "query"


_REQUIRED_PARAMS: Mapping[AuthMethod, tuple[str, ...]] = {
    AuthMethod.NONE: (),
    AuthMethod.BASIC: ("username", "password"),
    AuthMethod.BEARER: ("token",),
    AuthMethod.HEADER: ("name", "value"),
    AuthMethod.QUERY: ("params",),
}

# RFC 9110 token characters; a header value may hold anything but control characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "host",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


@dataclass(frozen=True, slots=True)
class TrackingCode:
    """Where and how to deliver one partner's webhooks.

    ``auth_params`` and ``signing_secret`` are credentials: they are left out of ``repr``
    so that a logged object never shows them.
    """

    code: str
    endpoint_url: str
    auth_method: AuthMethod = AuthMethod.NONE
    auth_params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    extra_fields: Mapping[str, str] = field(default_factory=dict)
    signing_secret: str | None = field(default=None, repr=False)
    call_on_finished: bool = False
    active: bool = True
    # While paused no attempt is made: the code's deliveries wait in the schedule.
    paused: bool = False


def validate_tracking_code(code: TrackingCode) -> TrackingCode:
    """Check a tracking code against CONTRACT section 4; return it unchanged or raise."""
    if not code.code:
        raise InvalidTrackingCode("code", "must be a non-empty string")
    # A plain string would slip past the identity checks that build the request's auth.
    if not isinstance(cast(object, code.auth_method), AuthMethod):
        raise InvalidTrackingCode("auth_method", f"must be one of {', '.join(AuthMethod)}")
    try:
        parts = urlsplit(code.endpoint_url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise InvalidTrackingCode("endpoint_url", "is not a well-formed URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise InvalidTrackingCode("endpoint_url", "must be an http or https URL with a host")
    if parts.username or parts.password:
        raise InvalidTrackingCode(
            "endpoint_url", "must not carry credentials; use auth_method basic"
        )
    for name in _REQUIRED_PARAMS[code.auth_method]:
        if name not in code.auth_params:
            raise InvalidTrackingCode(
                "auth_params", f"auth_method {code.auth_method} needs {name!r}"
            )
    if code.auth_method is AuthMethod.QUERY:
        params = code.auth_params["params"]
        if not isinstance(params, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise InvalidTrackingCode("auth_params", "params must be an object of strings")
    else:
        for name in _REQUIRED_PARAMS[code.auth_method]:
            if not isinstance(code.auth_params[name], str):
                raise InvalidTrackingCode("auth_params", f"{name!r} must be a string")
    if code.auth_method is AuthMethod.BASIC and ":" in code.auth_params["username"]:
        raise InvalidTrackingCode("auth_params", "'username' must not contain ':'")
    if code.auth_method is AuthMethod.BEARER and _HEADER_VALUE_FORBIDDEN.search(
        code.auth_params["token"]
    ):
        raise InvalidTrackingCode("auth_params", "'token' must not contain control characters")
    if code.auth_method is AuthMethod.HEADER:
        if not _HEADER_NAME.fullmatch(code.auth_params["name"]):
            raise InvalidTrackingCode("auth_params", "'name' must be an HTTP header name")
        if code.auth_params["name"].lower() in _RESERVED_HEADERS:
            raise InvalidTrackingCode("auth_params", "'name' must not replace a header we set")
        if _HEADER_VALUE_FORBIDDEN.search(code.auth_params["value"]):
            raise InvalidTrackingCode("auth_params", "'value' must not contain control characters")
    for key, value in code.extra_fields.items():
        if key == "data":
            raise InvalidTrackingCode("extra_fields", "must not contain 'data'")
        if not isinstance(value, str):
            raise InvalidTrackingCode("extra_fields", f"value of {key!r} must be a string")
    if code.signing_secret is not None:
        _check_signing_secret(code.signing_secret)
    return code


def _check_signing_secret(secret: str) -> None:
    if not secret.startswith("whsec_"):
        raise InvalidTrackingCode("signing_secret", "must start with 'whsec_'")
    # Decoded as the signer and the standardwebhooks library do: padding may be left out.
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "==") if _BASE64.fullmatch(encoded) else b""
    except binascii.Error:
        key = b""
    if not key:
        raise InvalidTrackingCode("signing_secret", "must be 'whsec_' + a base64 key")
