"""The Kafka producer every stage uses: idempotent, acks=all, creating each topic on first use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bookaudit.errors import TerminalError, TransientError
from bookaudit.kafka.serde import ENVELOPE_SCHEMA_ID, SCHEMA_HEADER, KafkaRecord


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
