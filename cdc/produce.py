"""Kafka edge of the capture: idempotent producer, topic creation, and the ack ledger for the slot."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bookaudit.cdc.envelope import ENVELOPE_SCHEMA_ID, SCHEMA_HEADER, KafkaRecord
from bookaudit.errors import TerminalError, TransientError


@dataclass
class _Txn:
    pending: int = 0
    end_lsn: int | None = None


@dataclass
class AckLedger:
    """Which LSN may be confirmed: the end of the longest prefix of committed transactions whose
    every event Kafka acknowledged. Pure bookkeeping, fed by delivery reports."""

    confirmed_lsn: int = 0
    error: str | None = None
    _current: _Txn | None = None
    _closed: deque[_Txn] = field(default_factory=deque)
    in_flight: int = 0

    def track(self) -> Callable[[Any, Any], None]:
        """Register one produced event of the open transaction; returns its delivery callback."""
        if self._current is None:
            self._current = _Txn()
        txn = self._current
        txn.pending += 1
        self.in_flight += 1

        def on_delivery(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is not None:
                # Never count a failed event as delivered: the slot must not move past it.
                self.error = self.error or str(err)
                return
            txn.pending -= 1

        return on_delivery

    def close(self, end_lsn: int) -> None:
        txn = self._current or _Txn()
        self._current = None
        txn.end_lsn = end_lsn
        self._closed.append(txn)

    def advance(self) -> int:
        while self._closed and self._closed[0].pending == 0:
            end = self._closed.popleft().end_lsn
            assert end is not None
            self.confirmed_lsn = max(self.confirmed_lsn, end)
        return self.confirmed_lsn

    @property
    def drained(self) -> bool:
        return self._current is None and not self._closed and self.in_flight == 0


@dataclass(frozen=True)
class ProducerSettings:
    bootstrap: str
    partitions: int = 3
    linger_ms: int = 5
    compression: str = "lz4"


class KafkaSink:
    """Produces envelopes, creating each table's topic on first use through the admin client."""

    def __init__(self, settings: ProducerSettings) -> None:
        self._settings = settings
        common: dict[str, str | int | float | bool] = {"bootstrap.servers": settings.bootstrap}
        self._admin = AdminClient(common)
        self._producer = Producer(
            {
                **common,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": settings.linger_ms,
                "compression.type": settings.compression,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                "queue.buffering.max.kbytes": 1048576,
            }
        )
        self._topics: set[str] = set()

    def ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        futures = self._admin.create_topics(
            [NewTopic(topic, num_partitions=self._settings.partitions)], operation_timeout=30
        )
        try:
            futures[topic].result(timeout=60)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise _kafka_error(f"cannot create topic {topic}", error) from None
        self._topics.add(topic)

    def send(
        self,
        record: KafkaRecord,
        on_delivery: Callable[[Any, Any], None],
        schema_id: bytes = ENVELOPE_SCHEMA_ID,
    ) -> None:
        self.ensure_topic(record.topic)
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=[(SCHEMA_HEADER, schema_id)],
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room again.
                self._producer.poll(0.1)

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise TransientError(f"Kafka did not acknowledge {remaining} events in {timeout:.0f}s")


def _kafka_error(what: str, error: Any) -> Exception:
    text = f"{what}: {error.str() if hasattr(error, 'str') else error}"
    retriable = getattr(error, "retriable", lambda: False)()
    return TransientError(text) if retriable else TerminalError(text)
