"""itep-webhooks: exam-state events from Kafka to iTEP partner webhooks."""

from __future__ import annotations

__version__ = "0.1.0"
