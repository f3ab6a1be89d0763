"""The Kafka producer every stage uses: idempotent, acks=all, creating each topic on first use."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bookaudit.classify import kafka_error, kafka_logger
from bookaudit.errors import TransientError
from bookaudit.kafka.chunks import CHUNK_HEADER, MAX_MESSAGE_BYTES, TOPIC_MAX_MESSAGE_BYTES, split
from bookaudit.kafka.serde import KafkaRecord

# How long to wait for the cluster to answer a metadata or topic request before retrying. A
# busy broker can take tens of seconds (measured on a loaded 2-core machine), and an unreachable
# one is only told apart by this timeout, so it is generous.
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ProducerSettings:
    bootstrap: str
    partitions: int = 3
    # A steady trickle of one-row transactions pays librdkafka and the broker per produce
    # request, and the consumers per fetch response, not per event: at 1,000 events/s, 15 ms
    # instead of 5 took the capture from about 195 to 125-170 µs of CPU per transaction and the
    # broker from 210-240 to 130-190 µs, for at most 15 ms more before an event is sent.
    linger_ms: int = 15
    compression: str = "lz4"


class KafkaSink:
    """Produces envelopes, creating each table's topic on first use through the admin client."""

    def __init__(self, settings: ProducerSettings) -> None:
        self._settings = settings
        common: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap,
            "logger": kafka_logger(),
        }
        self._admin = AdminClient(common)
        self._producer = Producer(
            {
                **common,
                "message.max.bytes": MAX_MESSAGE_BYTES,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": settings.linger_ms,
                "compression.type": settings.compression,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                "queue.buffering.max.kbytes": 1048576,
                # Topics are created before use (ensure_topic); give a busy broker time to
                # propagate them instead of failing events as unknown-topic.
                "topic.metadata.propagation.max.ms": 120000,
            }
        )
        self._topics: set[str] = set()

    def check(self) -> None:
        """Fail now, as a retriable error, when the cluster does not answer."""
        try:
            self._admin.list_topics(timeout=ADMIN_TIMEOUT_S * 2)
        except KafkaException as exc:
            raise kafka_error(f"Kafka at {self._settings.bootstrap} is unreachable", exc) from None

    def ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        new = NewTopic(
            topic,
            num_partitions=self._settings.partitions,
            config={"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)},
        )
        try:
            futures = self._admin.create_topics([new], operation_timeout=ADMIN_TIMEOUT_S)
            futures[topic].result(timeout=ADMIN_TIMEOUT_S * 2)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise kafka_error(f"cannot create topic {topic}", error) from None
        except TimeoutError:
            raise TransientError(
                f"cannot create topic {topic}: Kafka at {self._settings.bootstrap} did not answer "
                f"in {ADMIN_TIMEOUT_S * 2:.0f}s"
            ) from None
        self._await_metadata(topic)
        self._topics.add(topic)

    def _await_metadata(self, topic: str) -> None:
        """Wait until the producer's own metadata shows the new topic's partitions.

        A topic the controller just created can still be unknown to the broker the producer
        asks; on a loaded machine that outlasts librdkafka's propagation window and the first
        events come back UNKNOWN_TOPIC_OR_PART.
        """
        deadline = time.monotonic() + ADMIN_TIMEOUT_S * 2
        while True:
            try:
                found = self._producer.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
            except KafkaException as exc:
                raise kafka_error(f"cannot read metadata of topic {topic}", exc) from None
            if found is not None and found.error is None and found.partitions:
                return
            if time.monotonic() > deadline:
                raise TransientError(
                    f"topic {topic} was created but Kafka at {self._settings.bootstrap} does not "
                    f"list it after {ADMIN_TIMEOUT_S * 2:.0f}s"
                )
            time.sleep(0.1)

    def send(
        self,
        record: KafkaRecord,
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        """One event; one too big for a Kafka message goes as consecutive chunks (chunks.py),
        and `on_delivery` hears once, when every chunk is acknowledged or one failed."""
        self.ensure_topic(record.topic)
        parts = split(record.value)
        callback = on_delivery if len(parts) == 1 else _all_of(len(parts), on_delivery)
        for chunk, value in parts:
            headers: list[tuple[str, str | bytes | None]] = list(record.headers)
            if chunk is not None:
                headers.append((CHUNK_HEADER, chunk.header()))
            self._produce(record.topic, record.key, value, headers, callback)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room again.
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise kafka_error(f"cannot produce to {topic}", exc) from None

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise TransientError(f"Kafka did not acknowledge {remaining} events in {timeout:.0f}s")


def _all_of(count: int, on_delivery: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """One delivery callback for `count` chunks: success once all are in, or the first failure."""
    left = [count]

    def on_chunk(err: Any, msg: Any) -> None:
        if left[0] <= 0:
            return
        if err is not None:
            left[0] = 0
            on_delivery(err, msg)
            return
        left[0] -= 1
        if left[0] == 0:
            on_delivery(None, msg)

    return on_chunk
