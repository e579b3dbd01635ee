"""How a webhook request is written on the wire, and which headers cannot be."""

from __future__ import annotations

import pytest

from consumer.delivery.http1 import encode_request

HEAD = b"POST /hook HTTP/1.1\r\nHost: h.example\r\n"


def test_request_is_head_headers_length_and_body_in_that_order() -> None:
    wire = encode_request(HEAD, {"Content-Type": "text/plain", "webhook-id": "m1"}, b"a=1")
    assert wire == (
        HEAD + b"Content-Type: text/plain\r\nwebhook-id: m1\r\nContent-Length: 3\r\n\r\na=1"
    )


def test_header_values_are_written_as_utf_8_and_may_hold_tabs() -> None:
    wire = encode_request(HEAD, {"X-Api-Key": "k\t\u00e9"}, b"")
    assert b"X-Api-Key: k\t\xc3\xa9\r\n" in wire


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\x7fb", "\x1b[0m"])
def test_a_control_character_in_a_value_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        encode_request(HEAD, {"webhook-id": value}, b"")


@pytest.mark.parametrize("name", ["X Key", "X:Key", "X\nKey", "", "Clé"])
def test_a_name_that_is_not_a_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not an HTTP token"):
        encode_request(HEAD, {name: "v"}, b"")


def test_an_empty_body_still_says_its_length() -> None:
    assert encode_request(HEAD, {}, b"").endswith(b"Content-Length: 0\r\n\r\n")
