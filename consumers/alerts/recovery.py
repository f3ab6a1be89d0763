"""Recovery of the alerts a stopped instance recorded but may not have delivered: the alert topic
is read back, what it already holds is only recorded, the rest goes out again."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from bookaudit.classify import kafka_logger
from bookaudit.consumers.alerts.sink import KafkaOutput
from bookaudit.consumers.alerts.state import AlertStore, Delivery, Pending
from bookaudit.errors import DecodeError, TransientError
from bookaudit.kafka.alert import decode_alert

# A recovered alert was produced after it was recorded; the slack covers clock steps between the
# warehouse and the broker.
_SCAN_SLACK_MS = 5_000


def recover_kafka(output: KafkaOutput, store: AlertStore, orphans: Sequence[Pending]) -> int:
    """Deliver alerts a dead instance recorded but may not have produced: what the topic
    already holds is only recorded, the rest is produced. Returns how many were produced."""
    if not orphans:
        return 0
    since = min(p.recorded_at_ms for p in orphans) - _SCAN_SLACK_MS
    on_topic = alerts_on_topic(output.bootstrap, output.topic, since)
    found = [p.alert for p in orphans if p.alert.alert_id in on_topic]
    store.delivered(
        "kafka",
        [Delivery(a.id, output.topic, 1, *on_topic[a.alert_id]) for a in found],
    )
    missing = [p.alert for p in orphans if p.alert.alert_id not in on_topic]
    output.send(missing)
    return len(missing)


def alerts_on_topic(bootstrap: str, topic: str, since_ms: int) -> dict[str, tuple[int, int]]:
    """alert_id → (partition, offset) of every alert on the topic produced since `since_ms`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bookaudit-alerts-recovery",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "logger": kafka_logger(),
        }
    )
    try:
        return _read_back(consumer, topic, since_ms)
    except KafkaException as exc:
        raise TransientError(f"cannot read {topic}: {exc.args[0]}") from None
    finally:
        consumer.close()


def _read_back(consumer: Any, topic: str, since_ms: int) -> dict[str, tuple[int, int]]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return {}
    wanted = [TopicPartition(topic, p, since_ms) for p in metadata.partitions]
    starts = consumer.offsets_for_times(wanted, timeout=10)
    ends: dict[int, int] = {}
    assign = []
    for tp in starts:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
        if 0 <= tp.offset < high:
            ends[tp.partition] = high
            assign.append(TopicPartition(topic, tp.partition, tp.offset))
    found: dict[str, tuple[int, int]] = {}
    if not assign:
        return found
    consumer.assign(assign)
    deadline = time.monotonic() + 60
    while ends:
        if time.monotonic() > deadline:
            raise TransientError(f"reading {topic} back timed out")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        err = msg.error()
        partition = int(msg.partition() or 0)
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                ends.pop(partition, None)
                continue
            raise TransientError(f"reading {topic} back: {err.str()}")
        offset = int(msg.offset() or 0)
        try:
            alert_id = str(decode_alert(msg.value())["alert_id"])
        except (DecodeError, KeyError):
            alert_id = ""  # not ours; a foreign record on the topic cannot hide an alert
        if alert_id:
            found[alert_id] = (partition, offset)
        if offset + 1 >= ends.get(partition, 0):
            ends.pop(partition, None)
    return found
