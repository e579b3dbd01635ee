"""validate_tracking_code: the rules of CONTRACT section 4 for a tracking code."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.delivery.webhook import sign
from consumer.errors import InvalidTrackingCode
from consumer.tracking_codes import AuthMethod, TrackingCode, validate_tracking_code

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def make(**overrides: Any) -> TrackingCode:
    values: dict[str, Any] = {"code": "ACME-UNI", "endpoint_url": "https://hooks.example.edu/x"}
    values.update(overrides)
    return TrackingCode(**values)


def refused_field(code: TrackingCode) -> str:
    with pytest.raises(InvalidTrackingCode) as caught:
        validate_tracking_code(code)
    return caught.value.field


@pytest.mark.parametrize(
    ("auth_method", "auth_params"),
    [
        (AuthMethod.NONE, {}),
        (AuthMethod.BASIC, {"username": "u", "password": "p:w&+"}),
        (AuthMethod.BEARER, {"token": "t"}),
        (AuthMethod.HEADER, {"name": "X-Api-Key", "value": "v v"}),
        (AuthMethod.QUERY, {"params": {"key": "v"}}),
    ],
)
def test_each_auth_method_with_its_params_is_valid(auth_method, auth_params):
    code = make(auth_method=auth_method, auth_params=auth_params, signing_secret=SECRET)
    assert validate_tracking_code(code) is code


def test_empty_code_is_refused():
    assert refused_field(make(code="")) == "code"


@pytest.mark.parametrize(
    "url",
    ["ftp://h/x", "hooks.example.edu/x", "https:///x", "http://[::1", "http://h:99999/", ""],
)
def test_endpoint_url_must_be_a_well_formed_http_url(url):
    assert refused_field(make(endpoint_url=url)) == "endpoint_url"


def test_endpoint_url_must_not_carry_credentials():
    assert refused_field(make(endpoint_url="https://u:p@h/x")) == "endpoint_url"


def test_auth_method_given_as_a_plain_string_is_refused():
    """The request builder compares members by identity: a str would send no auth at all."""
    code = make(auth_method="basic", auth_params={"username": "u", "password": "p"})
    assert refused_field(code) == "auth_method"


@pytest.mark.parametrize(
    ("auth_method", "auth_params"),
    [
        (AuthMethod.BASIC, {"username": "u"}),
        (AuthMethod.BASIC, {"username": "u", "password": 5}),
        (AuthMethod.BASIC, {"username": "a:b", "password": "p"}),
        (AuthMethod.BEARER, {}),
        (AuthMethod.BEARER, {"token": "a\x01b"}),
        (AuthMethod.HEADER, {"name": "X-Key"}),
        (AuthMethod.HEADER, {"name": "X Key", "value": "v"}),
        (AuthMethod.HEADER, {"name": "X-Key", "value": "a\r\nInjected: 1"}),
        (AuthMethod.HEADER, {"name": "Content-Type", "value": "text/plain"}),
        (AuthMethod.HEADER, {"name": "webhook-signature", "value": "v1,x"}),
        (AuthMethod.QUERY, {"params": "key=v"}),
        (AuthMethod.QUERY, {"params": {"key": 1}}),
    ],
)
def test_auth_params_must_suit_the_auth_method(auth_method, auth_params):
    assert refused_field(make(auth_method=auth_method, auth_params=auth_params)) == "auth_params"


def test_extra_fields_must_not_contain_data():
    assert refused_field(make(extra_fields={"data": "x"})) == "extra_fields"


def test_extra_field_values_must_be_strings():
    assert refused_field(make(extra_fields={"n": 1})) == "extra_fields"


@pytest.mark.parametrize(
    "secret", ["abc", "whsec_", "whsec_not base64!", "whsec_@@@@", "whsec_a", "whsec_===="]
)
def test_signing_secret_must_be_whsec_and_a_base64_key(secret):
    assert refused_field(make(signing_secret=secret)) == "signing_secret"


@given(st.binary(min_size=1, max_size=64), st.booleans())
def test_base64_secret_padded_or_not_is_accepted_and_signs(key, strip_padding):
    encoded = base64.b64encode(key).decode()
    secret = "whsec_" + (encoded.rstrip("=") if strip_padding else encoded)
    validate_tracking_code(make(signing_secret=secret))
    assert sign(secret, "id", 1, b"body").startswith("v1,")


@given(st.text(max_size=12))
def test_every_accepted_signing_secret_can_sign(text):
    """A secret that passes validation never breaks the signer at send time."""
    secret = "whsec_" + text
    try:
        validate_tracking_code(make(signing_secret=secret))
    except InvalidTrackingCode:
        return
    assert sign(secret, "id", 1, b"body").startswith("v1,")


@given(st.text(max_size=40))
def test_validation_raises_nothing_but_invalid_tracking_code(url):
    """Any endpoint text is either accepted or refused with a field, never a crash."""
    try:
        validate_tracking_code(make(endpoint_url=url))
    except InvalidTrackingCode as exc:
        field = exc.field
    else:
        field = "endpoint_url"
    assert field == "endpoint_url"
