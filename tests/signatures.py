"""Signature checks with the official Standard Webhooks library."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def assert_verifies(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """The official standardwebhooks library accepts the signature."""
    try:
        Webhook(secret).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        pytest.fail(f"standardwebhooks rejected the signature: {exc}")
