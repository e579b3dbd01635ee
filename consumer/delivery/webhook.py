"""One webhook request, built from an event and its tracking code. Pure: no I/O.

Auth per CONTRACT section 4, Standard Webhooks headers and signature per section 3.
Credentials live only in ``headers`` and ``url``, both left out of ``repr``; log
``endpoint_host`` instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import field, replace
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from consumer import __version__
from consumer.events import ExamEvent
from consumer.payload import build_data, form_body
from consumer.records import record
from consumer.tracking_codes import AuthMethod, TrackingCode

USER_AGENT = f"itep-webhooks/{__version__}"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


@record
class WebhookRequest:
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    endpoint_host: str
    webhook_id: str
    timestamp: int
    signing_key: bytes | None = field(default=None, repr=False)

    def stamped(self, timestamp: int) -> WebhookRequest:
        """The same request sent at ``timestamp``: ``webhook-timestamp`` and the signature
        follow it, since receivers refuse a timestamp too far from their clock."""
        if timestamp == self.timestamp:
            return self
        headers = {**self.headers, "webhook-timestamp": str(timestamp)}
        if self.signing_key is not None:
            headers["webhook-signature"] = sign_with_key(
                self.signing_key, self.webhook_id, timestamp, self.body
            )
        return replace(self, headers=headers, timestamp=timestamp)


@record
class Endpoint:
    """What every request to one tracking code shares, worked out once per code."""

    url: str = field(repr=False)
    host: str
    headers: Mapping[str, str] = field(repr=False)  # content type, user agent, auth
    signing_key: bytes | None = field(repr=False)


def endpoint_host(url: str) -> str:
    """The host alone: no scheme, port, path, query or credentials."""
    return urlsplit(url).hostname or ""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    # Padding is added as the standardwebhooks library does, so unpadded keys work too.
    return base64.b64decode(secret.removeprefix("whsec_") + "==")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a ``whsec_`` secret."""
    return sign_with_key(signing_key(secret), msg_id, timestamp, body)


def sign_with_key(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``sign`` with the key already decoded (one-shot HMAC, in C)."""
    digest = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode("ascii")


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` appended to its query; the existing query is kept verbatim."""
    parts = urlsplit(url)
    added = urlencode(list(params.items()))
    query = f"{parts.query}&{added}" if parts.query and added else parts.query or added
    return urlunsplit(parts._replace(query=query))


def auth_headers(code: TrackingCode) -> dict[str, str]:
    params = code.auth_params
    if code.auth_method is AuthMethod.BASIC:
        pair = f"{params['username']}:{params['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if code.auth_method is AuthMethod.BEARER:
        return {"Authorization": f"Bearer {params['token']}"}
    if code.auth_method is AuthMethod.HEADER:
        return {str(params["name"]): str(params["value"])}
    return {}


def target_url(code: TrackingCode) -> str:
    if code.auth_method is AuthMethod.QUERY:
        return _with_query(code.endpoint_url, code.auth_params["params"])
    return code.endpoint_url


def build_body(event: ExamEvent, code: TrackingCode) -> bytes:
    """The form body; identical on every attempt of the same event."""
    return form_body(build_data(event), code.extra_fields)


def prepare_endpoint(code: TrackingCode) -> Endpoint:
    return Endpoint(
        url=target_url(code),
        host=endpoint_host(code.endpoint_url),
        headers={
            "Content-Type": FORM_CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            # The response body is read only to free the connection: not compressed, please.
            "Accept-Encoding": "identity",
            **auth_headers(code),
        },
        signing_key=signing_key(code.signing_secret) if code.signing_secret else None,
    )


# Tracking-code objects are replaced, never changed, when staff edit a code: the endpoint
# worked out for one object stays right for as long as that object is in use.
_ENDPOINTS: dict[str, tuple[TrackingCode, Endpoint]] = {}
_ENDPOINTS_MAX: Final = 10_000


def endpoint_of(code: TrackingCode) -> Endpoint:
    """``prepare_endpoint(code)``, kept for as long as ``code`` is the object in use."""
    cached = _ENDPOINTS.get(code.code)
    if cached is not None and cached[0] is code:
        return cached[1]
    if len(_ENDPOINTS) >= _ENDPOINTS_MAX:
        _ENDPOINTS.clear()
    endpoint = prepare_endpoint(code)
    _ENDPOINTS[code.code] = (code, endpoint)
    return endpoint


def build_request(
    event: ExamEvent, code: TrackingCode, body: bytes, timestamp: int
) -> WebhookRequest:
    """The request for one attempt at Unix time ``timestamp``."""
    endpoint = endpoint_of(code)
    headers = {
        **endpoint.headers,
        "webhook-id": event.event_id,
        "webhook-timestamp": str(timestamp),
    }
    key = endpoint.signing_key
    if key is not None:
        headers["webhook-signature"] = sign_with_key(key, event.event_id, timestamp, body)
    return WebhookRequest(
        url=endpoint.url,
        headers=headers,
        body=body,
        endpoint_host=endpoint.host,
        webhook_id=event.event_id,
        timestamp=timestamp,
        signing_key=key,
    )
