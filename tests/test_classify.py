"""Client-library errors become transient or terminal by their codes, never by message text."""

from __future__ import annotations

import logging

import psycopg
from confluent_kafka import KafkaError, KafkaException

from bookaudit.classify import RepeatFilter, kafka_error, pg_error
from bookaudit.errors import TerminalError, TransientError


def test_kafka_codes_that_pass_on_their_own_retry() -> None:
    for code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._MSG_TIMED_OUT):
        assert isinstance(kafka_error("produce", KafkaError(code)), TransientError)
    assert isinstance(
        kafka_error("produce", KafkaError(KafkaError.UNKNOWN, retriable=True)), TransientError
    )


def test_kafka_fatal_and_permanent_codes_stop_with_the_code_named() -> None:
    fatal = kafka_error("produce", KafkaError(KafkaError._TRANSPORT, fatal=True))
    assert isinstance(fatal, TerminalError)
    too_big = kafka_error("produce", KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))
    assert isinstance(too_big, TerminalError)
    assert "MSG_SIZE_TOO_LARGE" in str(too_big)
    denied = kafka_error("topic", KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert isinstance(denied, TerminalError)


def test_kafka_classification_ignores_the_message_text() -> None:
    # A reason that reads like an outage does not make a permanent code retriable.
    error = KafkaError(KafkaError.INVALID_CONFIG, "broker transport failure, retrying")
    assert isinstance(kafka_error("x", error), TerminalError)


def test_postgres_errors_by_sqlstate() -> None:
    assert isinstance(pg_error("q", psycopg.errors.AdminShutdown()), TransientError)
    assert isinstance(pg_error("q", psycopg.errors.SerializationFailure()), TransientError)
    assert isinstance(pg_error("q", psycopg.errors.TooManyConnections()), TransientError)
    assert isinstance(pg_error("q", psycopg.errors.ObjectInUse()), TransientError)
    assert isinstance(pg_error("q", psycopg.errors.ConfigurationLimitExceeded()), TerminalError)
    undefined = pg_error("q", psycopg.errors.UndefinedTable())
    assert isinstance(undefined, TerminalError)
    assert "42P01" in str(undefined)
    # No SQLSTATE on an OperationalError: the connection itself broke.
    assert isinstance(pg_error("q", psycopg.OperationalError("gone")), TransientError)


def test_repeated_library_lines_are_let_through_once_per_window() -> None:
    seen = RepeatFilter(window_s=60)

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("bookaudit.kafka", logging.ERROR, "", 0, text, None, None)

    first = line("FAIL|rdkafka#producer-1| 127.0.0.1:1: Connect failed (after 0ms)")
    again = line("FAIL|rdkafka#producer-1| 127.0.0.1:1: Connect failed (after 12ms)")
    other = line("ERROR|rdkafka#producer-1| 1/1 brokers are down")
    assert [seen.filter(r) for r in (first, again, other)] == [True, False, True]
