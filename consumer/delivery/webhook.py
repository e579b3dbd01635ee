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
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode, urlsplit, urlunsplit

from consumer import __version__
from consumer.events import ExamEvent
from consumer.payload import encode_data, encode_form
from consumer.tracking_codes import AuthMethod, TrackingCode

USER_AGENT = f"itep-webhooks/{__version__}"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    endpoint_host: str
    webhook_id: str
    timestamp: int
    signing_secret: str | None = field(default=None, repr=False)

    def stamped(self, timestamp: int) -> WebhookRequest:
        """The same request sent at ``timestamp``: ``webhook-timestamp`` and the signature
        follow it, since receivers refuse a timestamp too far from their clock."""
        if timestamp == self.timestamp:
            return self
        headers = {**self.headers, "webhook-timestamp": str(timestamp)}
        if self.signing_secret:
            headers["webhook-signature"] = sign(
                self.signing_secret, self.webhook_id, timestamp, self.body
            )
        return replace(self, headers=headers, timestamp=timestamp)


def endpoint_host(url: str) -> str:
    """The host alone: no scheme, port, path, query or credentials."""
    return urlsplit(url).hostname or ""


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a ``whsec_`` secret."""
    # Padding is added as the standardwebhooks library does, so unpadded keys work too.
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
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
    return encode_form(encode_data(event), code.extra_fields)


def build_request(
    event: ExamEvent, code: TrackingCode, body: bytes, timestamp: int
) -> WebhookRequest:
    """The request for one attempt at Unix time ``timestamp``."""
    headers = {
        "Content-Type": FORM_CONTENT_TYPE,
        "User-Agent": USER_AGENT,
        "webhook-id": event.event_id,
        "webhook-timestamp": str(timestamp),
    }
    if code.signing_secret:
        headers["webhook-signature"] = sign(code.signing_secret, event.event_id, timestamp, body)
    headers.update(auth_headers(code))
    return WebhookRequest(
        url=target_url(code),
        headers=headers,
        body=body,
        endpoint_host=endpoint_host(code.endpoint_url),
        webhook_id=event.event_id,
        timestamp=timestamp,
        signing_secret=code.signing_secret,
    )
