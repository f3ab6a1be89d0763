"""The one exception root of bookaudit, split into transient (retry) and terminal (stop) errors."""

from __future__ import annotations

from typing import Any


class BookauditError(Exception):
    """Root of every error bookaudit raises on purpose."""


class TransientError(BookauditError):
    """A failure that may pass on its own (a broker or server restarting): retry with backoff."""


class TerminalError(BookauditError):
    """A failure that retrying cannot fix: stop and tell the user what to change."""


class ConfigError(TerminalError):
    """A configuration value is missing or malformed; the message names the setting."""


class SourceCheckError(TerminalError):
    """The source database cannot host the audit install (wal_level, missing table, privileges)."""


class DecodeError(TerminalError):
    """Bytes that do not follow the wire format they claim to; carries the offending payload."""

    def __init__(self, message: str, payload: bytes | None = None) -> None:
        super().__init__(message)
        self.payload = payload


class PoisonMessageError(TerminalError):
    """One Kafka record that cannot be processed; it is dead-lettered, never retried forever."""

    def __init__(self, message: str, kafka_message: Any = None) -> None:
        super().__init__(message)
        self.kafka_message = kafka_message
