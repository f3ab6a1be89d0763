"""kill -9 of the capture, and of the writer, mid-stream: every change lands exactly once, on
each schema (bigint ids, text job numbers) and in both capture modes."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.slow

CHANGES = 20_000
PER_TXN = 50


@dataclass(frozen=True)
class Load:
    """The rows a schema is loaded with: one per number g, marked 'c-<g>' in `marker`."""

    table: str  # schema-qualified
    setup: str  # the parent row the loaded rows need, written first by the same loader
    insert: str  # rows %(first)s to %(last)s
    marker: str
    fields: int  # the columns a loaded row has a value in: its field changes


LOADS = {
    "sample": Load(
        table="public.customers",
        setup="",
        insert="INSERT INTO customers (name) SELECT 'c-' || g "
        "FROM generate_series(%(first)s::int, %(last)s::int) g",
        marker="name",
        fields=2,  # id and name; the other columns are NULL
    ),
    "jobs": Load(
        # The booking table itself, keyed by a text job number the application makes up.
        table="ops.jobs",
        setup="INSERT INTO ops.clients (client_no, full_name) VALUES ('C-1', 'Loader Ltd')",
        insert="INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
        "SELECT 'c-' || g, 'C-1', 'Job ' || g, 100 + g %% 100 "
        "FROM generate_series(%(first)s::int, %(last)s::int) g",
        marker="job_no",
        # job_no, client_ref, title, state, quoted_total, modified_at; the rest are NULL
        fields=6,
    ),
}


def _load(p: Pipeline) -> Load:
    return LOADS[p.schema.name]


def _topic(p: Pipeline) -> str:
    return p.topic(_load(p).table)


def _generate(p: Pipeline, done: threading.Event) -> None:
    load = _load(p)
    with p.source() as conn:
        conn.autocommit = False
        if load.setup:
            with conn.transaction():
                conn.execute("SELECT bookaudit.set_actor('loader', role => 'batch')")
                conn.execute(load.setup)
        for start in range(0, CHANGES, PER_TXN):
            with conn.transaction():
                conn.execute("SELECT bookaudit.set_actor('loader', role => 'batch')")
                conn.execute(load.insert, {"first": start, "last": start + PER_TXN - 1})
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
    load = _load(p)
    schema_name, table_name = load.table.split(".")
    loaded = "WHERE r.schema_name = %s AND r.table_name = %s"
    where = (schema_name, table_name)
    rows = p.warehouse(
        "SELECT count(*), count(DISTINCT after ->> %s), count(DISTINCT row_key), "
        f"count(DISTINCT (commit_lsn, sequence)) FROM audit.row_changes r {loaded}",
        (load.marker, *where),
    )
    assert rows == [(CHANGES, CHANGES, CHANGES, CHANGES)]
    names = {
        r[0]
        for r in p.warehouse(
            f"SELECT after ->> %s FROM audit.row_changes r {loaded}", (load.marker, *where)
        )
    }
    assert names == {f"c-{i}" for i in range(CHANGES)}
    fields = p.warehouse(
        "SELECT count(*) FROM audit.field_changes f JOIN audit.row_changes r ON r.id = f.change_id "
        f"{loaded}",
        where,
    )
    assert fields == [(load.fields * CHANGES,)]
    actors = p.warehouse("SELECT DISTINCT actor FROM audit.row_changes")
    assert actors == [("loader",)]


def test_capture_killed_mid_stream_resumes_with_nothing_lost(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    topic = _topic(pipeline)
    done = threading.Event()
    generator = threading.Thread(target=_generate, args=(pipeline, done))
    with pipeline.running("capture") as capture:
        generator.start()
        try:
            # A generator that died (a bad statement) ends the wait at once; the counts then fail.
            wait_for(
                "4000 events in Kafka",
                lambda: _kafka_count(pipeline, topic) >= 4000 or not generator.is_alive(),
            )
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


def test_writer_killed_mid_stream_resumes_with_no_duplicate(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    done = threading.Event()
    _generate(pipeline, done)
    pipeline.capture()

    def written() -> int:
        return int(pipeline.warehouse("SELECT count(*) FROM audit.row_changes")[0][0])

    with pipeline.running("consume", "audit", "--batch-size", "200") as writer:
        wait_for("4000 rows in the warehouse", lambda: written() >= 4000)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    at_kill = written()
    assert writer.returncode == -signal.SIGKILL
    assert at_kill < CHANGES, "the kill came after the writer had finished"

    pipeline.consume()
    _assert_exactly_once(pipeline)
