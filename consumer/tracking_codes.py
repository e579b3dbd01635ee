"""The tracking-code value (CONTRACT section 4) and its validation. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
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


def validate_tracking_code(code: TrackingCode) -> TrackingCode:
    """Check a tracking code against CONTRACT section 4; return it unchanged or raise."""
    if not code.code:
        raise InvalidTrackingCode("code", "must be a non-empty string")
    parts = urlsplit(code.endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
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
    for key, value in code.extra_fields.items():
        if key == "data":
            raise InvalidTrackingCode("extra_fields", "must not contain 'data'")
        if not isinstance(value, str):
            raise InvalidTrackingCode("extra_fields", f"value of {key!r} must be a string")
    if code.signing_secret is not None and not code.signing_secret.startswith("whsec_"):
        raise InvalidTrackingCode("signing_secret", "must start with 'whsec_'")
    return code
