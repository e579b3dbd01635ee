"""Building one webhook request: auth, body, Standard Webhooks headers, no leaked secrets."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from consumer import __version__
from consumer.delivery.webhook import WebhookRequest, build_body, build_request, endpoint_host
from consumer.events import ExamEvent, parse_event
from consumer.payload import encode_data
from consumer.tracking_codes import AuthMethod, TrackingCode
from tests.factories import event_dict
from tests.signatures import assert_verifies

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
TRICKY = "a+b&c=d%20e f é 中文 😀"


def make_event(**changes: Any) -> ExamEvent:
    """The contract's example with a fixed event id and an oid full of form specials."""
    doc = event_dict(event_id="0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f", oid=TRICKY, **changes)
    return parse_event(orjson.dumps(doc))


def make_request(code: TrackingCode, timestamp: int | None = None) -> WebhookRequest:
    event = make_event()
    when = int(time.time()) if timestamp is None else timestamp
    return build_request(event, code, build_body(event, code), when)


def code_with(
    method: AuthMethod = AuthMethod.NONE,
    params: dict[str, Any] | None = None,
    url: str = "https://hooks.example.edu/itep?src=itep",
    **kw: Any,
) -> TrackingCode:
    return TrackingCode(
        code="ACME-UNI", endpoint_url=url, auth_method=method, auth_params=params or {}, **kw
    )


def form(request: WebhookRequest) -> dict[str, list[str]]:
    return parse_qs(request.body.decode("ascii"), strict_parsing=True, keep_blank_values=True)


def test_no_auth_adds_no_authorization_and_keeps_the_url() -> None:
    request = make_request(code_with())
    assert "Authorization" not in request.headers
    assert request.url == "https://hooks.example.edu/itep?src=itep"


def test_basic_auth_sends_base64_user_and_password() -> None:
    code = code_with(AuthMethod.BASIC, {"username": "acme", "password": "p@ss:w0rd é"})
    request = make_request(code)
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token) == "acme:p@ss:w0rd é".encode()


def test_bearer_auth_sends_the_token() -> None:
    request = make_request(code_with(AuthMethod.BEARER, {"token": "tok-123"}))
    assert request.headers["Authorization"] == "Bearer tok-123"


def test_header_auth_sends_the_named_header() -> None:
    request = make_request(code_with(AuthMethod.HEADER, {"name": "X-Api-Key", "value": "k-1"}))
    assert request.headers["X-Api-Key"] == "k-1"
    assert "Authorization" not in request.headers


def test_query_auth_appends_params_to_the_existing_query() -> None:
    code = code_with(AuthMethod.QUERY, {"params": {"key": "s3cr+t&=x", "v": "2"}})
    request = make_request(code)
    query = parse_qs(urlsplit(request.url).query, strict_parsing=True)
    assert query == {"src": ["itep"], "key": ["s3cr+t&=x"], "v": ["2"]}
    assert request.url.startswith("https://hooks.example.edu/itep?src=itep&")
    assert "Authorization" not in request.headers


def test_query_auth_on_a_url_without_query_adds_one() -> None:
    code = code_with(AuthMethod.QUERY, {"params": {"key": "k"}}, url="https://h.example/x")
    assert make_request(code).url == "https://h.example/x?key=k"


def test_body_holds_data_json_then_extra_fields() -> None:
    code = code_with(extra_fields={"partner": "ACME & Sons", "note": TRICKY})
    request = make_request(code)
    fields = form(request)
    assert fields == {
        "data": [encode_data(make_event())],
        "partner": ["ACME & Sons"],
        "note": [TRICKY],
    }
    assert request.body.startswith(b"data=")
    assert orjson.loads(fields["data"][0])["OID"] == TRICKY


def test_body_is_ascii_with_form_specials_percent_encoded() -> None:
    body = make_request(code_with()).body
    assert body.isascii()
    assert b"a%2Bb%26c%3Dd%2520e+f+%C3%A9+%E4%B8%AD%E6%96%87+%F0%9F%98%80" in body


def test_signature_verifies_with_standardwebhooks() -> None:
    request = make_request(code_with(signing_secret=SECRET))
    assert_verifies(SECRET, request.body, request.headers)


def test_signature_fails_to_verify_when_the_body_changes() -> None:
    request = make_request(code_with(signing_secret=SECRET))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body + b"x", dict(request.headers), json_parse=False)


def test_unpadded_secret_signs_like_standardwebhooks() -> None:
    unpadded = "whsec_" + base64.b64encode(b"key-of-31-bytes-for-padding-xyz").decode().rstrip("=")
    request = make_request(code_with(signing_secret=unpadded))
    assert_verifies(unpadded, request.body, request.headers)


def test_unsigned_code_sends_no_signature() -> None:
    assert "webhook-signature" not in make_request(code_with()).headers


def test_webhook_id_is_the_event_id_and_timestamp_the_attempt_time() -> None:
    request = make_request(code_with(), timestamp=1_764_086_531)
    assert request.headers["webhook-id"] == "0b7f7c1e-5a0b-4c55-9f7a-1d2c3b4a5e6f"
    assert request.webhook_id == request.headers["webhook-id"]
    assert request.headers["webhook-timestamp"] == "1764086531"


def test_headers_carry_content_type_and_user_agent() -> None:
    headers = make_request(code_with()).headers
    assert headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert headers["User-Agent"] == f"itep-webhooks/{__version__}"


def test_endpoint_host_is_the_host_alone() -> None:
    assert endpoint_host("https://Hooks.Example.edu:8443/p?token=x#f") == "hooks.example.edu"
    code = code_with(AuthMethod.QUERY, {"params": {"token": "t"}})
    assert make_request(code).endpoint_host == "hooks.example.edu"


def test_repr_of_request_and_tracking_code_shows_no_secret() -> None:
    code = code_with(
        AuthMethod.QUERY,
        {"params": {"token": "query-secret-1"}},
        signing_secret=SECRET,
    )
    basic = code_with(AuthMethod.BASIC, {"username": "user-x", "password": "basic-secret-2"})
    texts = [repr(code), repr(make_request(code)), repr(basic), repr(make_request(basic))]
    for text in texts:
        for secret in ("query-secret-1", SECRET, "basic-secret-2", "Basic ", "Authorization"):
            assert secret not in text
    assert "hooks.example.edu" in repr(make_request(code))


def test_stamped_request_moves_timestamp_and_signature_together() -> None:
    """Restamping keeps id and body, and the new signature verifies at the new time."""
    request = make_request(code_with(signing_secret=SECRET), timestamp=1_700_000_000)
    now = int(time.time())
    stamped = request.stamped(now)
    assert stamped.headers["webhook-timestamp"] == str(now)
    assert stamped.headers["webhook-id"] == request.headers["webhook-id"]
    assert stamped.body == request.body
    assert stamped.headers["webhook-signature"] != request.headers["webhook-signature"]
    assert_verifies(SECRET, stamped.body, stamped.headers)


def test_stamping_an_unsigned_request_adds_no_signature() -> None:
    stamped = make_request(code_with(), timestamp=1_700_000_000).stamped(1_700_000_009)
    assert stamped.headers["webhook-timestamp"] == "1700000009"
    assert "webhook-signature" not in stamped.headers
