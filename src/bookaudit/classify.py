"""Turns client-library errors into bookaudit's transient or terminal errors, by their codes."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import psycopg
from confluent_kafka import KafkaError
from psycopg import pq

from bookaudit.errors import BookauditError, TerminalError, TransientError

# Codes librdkafka reports without its retriable flag (local errors, delivery reports) that
# still pass on their own: the broker is down, restarting or electing a leader.
KAFKA_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        # The group moved on under a commit: the batch is re-read and deduplicated.
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)

# SQLSTATE classes and codes that a retry can outlive: the connection broke (08), the server is
# short of resources (53, except 53400: a configured limit such as max_replication_slots, which
# needs a person), an operator stopped it (57P01-57P03), a conflict rolled us back (40), or
# another process holds the object (55006, a replication slot in use).
_PG_TRANSIENT_CLASSES = ("08", "53", "40")
_PG_TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "55006"})
_PG_TERMINAL_CODES = frozenset({"53400"})

KAFKA_LOGGER = "bookaudit.kafka"


def one_line(text: str) -> str:
    return " ".join(text.split())


def kafka_error(what: str, error: Any) -> BookauditError:
    """A KafkaError (or anything carrying one) as a transient or terminal error: fatal() stops,
    retriable() or a known passing code retries, everything else stops with its code named."""
    if not isinstance(error, KafkaError):
        inner = getattr(error, "args", ())
        error = inner[0] if inner and isinstance(inner[0], KafkaError) else None
        if error is None:
            return TransientError(f"{what}: Kafka did not answer in time")
    text = f"{what}: {error.name()}: {one_line(error.str())}"
    if error.fatal():
        return TerminalError(text)
    if error.retriable() or error.code() in KAFKA_TRANSIENT_CODES:
        return TransientError(text)
    return TerminalError(text)


def kafka_logger() -> logging.Logger:
    """Where librdkafka's own log lines go (confluent-kafka's `logger` setting), so that a
    broker outage is one handler's business instead of raw lines on stderr."""
    return logging.getLogger(KAFKA_LOGGER)


def pg_transient(sqlstate: str | None) -> bool:
    if sqlstate is None:
        return False
    if sqlstate in _PG_TERMINAL_CODES:
        return False
    return sqlstate.startswith(_PG_TRANSIENT_CLASSES) or sqlstate in _PG_TRANSIENT_CODES


def pg_error(what: str, exc: psycopg.Error) -> BookauditError:
    """A psycopg error by its SQLSTATE; an OperationalError without one is a lost connection."""
    primary = exc.diag.message_primary if exc.sqlstate else str(exc)
    text = f"{what}: {one_line(primary or type(exc).__name__)}"
    if exc.sqlstate is None and isinstance(exc, psycopg.OperationalError):
        return TransientError(text)
    if exc.sqlstate and pg_transient(exc.sqlstate):
        return TransientError(text)
    return TerminalError(f"{text} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else text)


def pg_connect_error(what: str, exc: psycopg.Error, conninfo: str) -> BookauditError:
    """libpq reports no SQLSTATE for a refused connection, so ask the server with PQping:
    no answer, or "not accepting connections yet", retries; a server that is up and still
    refused us (password, database, pg_hba) will refuse again, so stop."""
    text = one_line(str(exc)) or type(exc).__name__
    try:
        ping = pq.PGconn.ping(conninfo.encode())
    except psycopg.Error:
        ping = pq.Ping.NO_ATTEMPT
    if ping in (pq.Ping.NO_RESPONSE, pq.Ping.REJECT):
        return TransientError(f"{what}: {text}")
    return TerminalError(f"{what}: {text}")


class RepeatFilter(logging.Filter):
    """Lets a log line through once per `window_s` (digits ignored), so a broker that stays down
    for an hour logs a few lines, not one per reconnect attempt."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        shape = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self._seen.get(shape, -self.window_s) < self.window_s:
            return False
        self._seen[shape] = now
        return True


def setup_logging(level: str = "WARNING") -> None:
    """One line per record on stderr; librdkafka's lines pass through RepeatFilter."""
    logging.basicConfig(level=level, format="bookaudit: %(name)s: %(levelname)s: %(message)s")
    kafka = kafka_logger()
    if not any(isinstance(f, RepeatFilter) for f in kafka.filters):
        kafka.addFilter(RepeatFilter())
