"""Log lines never carry credentials."""

from __future__ import annotations

from consumer.logs import drop_secrets


def test_fields_named_for_credentials_are_redacted() -> None:
    event = {
        "event": "x",
        "password": "p",
        "token": "t",
        "authorization": "Basic abc",
        "database_url": "postgresql://u:p@h/db",
        "endpoint_host": "hooks.example.edu",
    }
    out = drop_secrets(None, "info", event)
    assert {k: v for k, v in out.items() if v == "[redacted]"}.keys() == {
        "password",
        "token",
        "authorization",
        "database_url",
    }
    assert out["endpoint_host"] == "hooks.example.edu"
