"""The one error tree of itep-webhooks.

ItepWebhooksError            root; ``retriable`` says whether trying again can help
 ├── ConfigError             a setting is missing or malformed: start-up stops with one line
 ├── InvalidEvent            an event breaks CONTRACT section 2: dead-lettered, never retried
 ├── InvalidTrackingCode     a tracking-code row or CLI input breaks CONTRACT section 4
 ├── StoreUnavailable        Postgres cannot be reached right now (retriable)
 ├── MigrationError          a migration file is malformed or failed to apply
 ├── TopicError              a Kafka topic could not be created at start-up
 ├── StartupError            Kafka, Postgres or the HTTP port cannot be had at start-up
 └── EndpointBlocked         a webhook target resolves only to non-public addresses
"""

from __future__ import annotations

from typing import ClassVar


class ItepWebhooksError(Exception):
    """Root of every error raised on purpose by this package."""

    retriable: ClassVar[bool] = False


class ConfigError(ItepWebhooksError):
    """A setting is missing or malformed."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class InvalidEvent(ItepWebhooksError):
    """An exam event that breaks a rule of the contract.

    ``field`` is a dotted path (``results.sections.grammar.level``), ``rule`` says what is
    wrong. What could be read of the event (``event_id``, ``test_id``, ...) rides along in
    ``known`` so that a ``rejected`` outcome can still be published.
    """

    def __init__(self, field: str, rule: str, known: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
        self.known: dict[str, str] = dict(known or {})


class InvalidTrackingCode(ItepWebhooksError):
    """A tracking code that breaks a rule of CONTRACT section 4."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class StoreUnavailable(ItepWebhooksError):
    """The tracking-code database cannot be reached; the lookup is tried again."""

    retriable = True


class MigrationError(ItepWebhooksError):
    """A migration could not be read or applied."""


class TopicError(ItepWebhooksError):
    """A topic the service needs could not be created."""


class EndpointBlocked(ItepWebhooksError):
    """Every address of a webhook target is loopback, private, link-local or otherwise not
    public, and private endpoints are not allowed. The delivery fails with
    ``endpoint_blocked`` and is not retried."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host}: resolves only to addresses that are not public")
        self.host = host


class StartupError(ItepWebhooksError):
    """The service cannot start: a broker, the database or a port is not to be had."""
