"""kill -9 of the capture, and of the writer, mid-stream: every change lands exactly once."""

from __future__ import annotations

import signal
import threading

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.slow

CHANGES = 20_000
PER_TXN = 50


def _generate(p: Pipeline, done: threading.Event) -> None:
    with p.source() as conn:
        conn.autocommit = False
        for start in range(0, CHANGES, PER_TXN):
            with conn.transaction():
                conn.execute("SELECT bookaudit.set_actor('loader', role => 'batch')")
                conn.execute(
                    "INSERT INTO customers (name) SELECT 'c-' || g "
                    "FROM generate_series(%s::int, %s::int) g",
                    (start, start + PER_TXN - 1),
                )
    done.set()


def _kafka_count(p: Pipeline, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": p.stack.kafka_bootstrap, "group.id": "probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=10)[1]
            for part in metadata.partitions
        )
    except KafkaException:
        return 0
    finally:
        consumer.close()


def _assert_exactly_once(p: Pipeline) -> None:
    rows = p.warehouse(
        "SELECT count(*), count(DISTINCT after ->> 'name'), "
        "count(DISTINCT (commit_lsn, sequence)) FROM audit.row_changes "
        "WHERE table_name = 'customers'"
    )
    assert rows == [(CHANGES, CHANGES, CHANGES)]
    names = {
        r[0]
        for r in p.warehouse(
            "SELECT after ->> 'name' FROM audit.row_changes WHERE table_name = 'customers'"
        )
    }
    assert names == {f"c-{i}" for i in range(CHANGES)}
    fields = p.warehouse(
        "SELECT count(*) FROM audit.field_changes f JOIN audit.row_changes r ON r.id = f.change_id "
        "WHERE r.table_name = 'customers'"
    )
    assert fields == [(2 * CHANGES,)]  # id and name; the other columns are NULL
    actors = p.warehouse("SELECT DISTINCT actor FROM audit.row_changes")
    assert actors == [("loader",)]


def test_capture_killed_mid_stream_resumes_with_nothing_lost(pipeline: Pipeline) -> None:
    topic = f"{pipeline.prefix}.public.customers"
    capture = pipeline.spawn("capture")
    done = threading.Event()
    generator = threading.Thread(target=_generate, args=(pipeline, done))
    generator.start()
    try:
        wait_for("4000 events in Kafka", lambda: _kafka_count(pipeline, topic) >= 4000)
        capture.send_signal(signal.SIGKILL)
        capture.wait(timeout=10)
        in_kafka_at_kill = _kafka_count(pipeline, topic)
        still_generating = not done.is_set()
    finally:
        generator.join()
    assert capture.returncode == -signal.SIGKILL
    assert in_kafka_at_kill < CHANGES, "the kill came after the stream had ended"
    assert still_generating or in_kafka_at_kill < CHANGES

    pipeline.capture()
    assert _kafka_count(pipeline, topic) >= CHANGES
    pipeline.consume()
    _assert_exactly_once(pipeline)


def test_writer_killed_mid_stream_resumes_with_no_duplicate(pipeline: Pipeline) -> None:
    done = threading.Event()
    _generate(pipeline, done)
    pipeline.capture()
    writer = pipeline.spawn("consume", "audit", "--batch-size", "200")

    def written() -> int:
        return int(pipeline.warehouse("SELECT count(*) FROM audit.row_changes")[0][0])

    wait_for("4000 rows in the warehouse", lambda: written() >= 4000)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    at_kill = written()
    assert writer.returncode == -signal.SIGKILL
    assert at_kill < CHANGES, "the kill came after the writer had finished"

    pipeline.consume()
    _assert_exactly_once(pipeline)
