"""Copies of one event, as an at-least-once capture re-sends them, are each stored once and never
stop the writer: within one batch, across batches, and across partitions and writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from bookaudit.consumers._kafka import ConsumerSettings
from bookaudit.consumers.audit.job import AuditWriter, WriterStats
from bookaudit.consumers.audit.rows import prepare_row
from bookaudit.consumers.audit.writer import WarehouseWriter
from bookaudit.warehouse.schema import init_warehouse
from bookaudit.warehouse.verify import verify_chain
from devstack import StackEnv
from tests.consumers.fixtures import ENTRY
from tests.integration.harness import Pipeline, scratch_database
from tests.integration.schemas import Key, Schema


@dataclass(frozen=True)
class Raw:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


@pytest.fixture
def pipeline(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    """Each schema, in logical mode only: copies are a consumer matter, and both modes share the
    consumer."""
    p = Pipeline(stack, schema=schema).create()
    yield p
    p.drop()


def _bookings_topic(p: Pipeline) -> str:
    return p.topic(str(p.schema.bookings_table))


def _read_topic(p: Pipeline, topic: str) -> list[Raw]:
    """Every record of every partition of `topic`, in partition then offset order."""
    consumer = Consumer(
        {"bootstrap.servers": p.stack.kafka_bootstrap, "group.id": p.name + "-reader"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        found: list[Raw] = []
        for part in sorted(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, part, low)])
            while True:
                msg = consumer.poll(10)
                assert msg is not None, f"{topic}[{part}] ended before offset {high}"
                assert msg.error() is None, msg.error()
                headers = msg.headers() or []
                assert isinstance(headers, list)
                found.append(Raw(part, msg.key(), msg.value(), headers))
                if (msg.offset() or 0) + 1 >= high:
                    break
        return found
    finally:
        consumer.close()


def _produce(p: Pipeline, topic: str, records: list[Raw], partition_of: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": p.stack.kafka_bootstrap})
    for r in records:
        producer.produce(
            topic, key=r.key, value=r.value, headers=r.headers, partition=partition_of[r.partition]
        )
    assert producer.flush(30) == 0


def _book_and_reprice(p: Pipeline, bookings: int = 1) -> list[Key]:
    ids = p.seed(bookings, price="100.00")
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        p.schema.set_price(conn, ids, "120.00")
    return ids


def _run_writer(p: Pipeline, batch_size: int = 500, group_id: str | None = None) -> WriterStats:
    settings = ConsumerSettings(
        bootstrap=p.stack.kafka_bootstrap,
        group_id=group_id or p.group_id,
        topic_prefix=p.prefix,
        batch_size=batch_size,
    )
    return AuditWriter(settings, p.warehouse_dsn, p.logs.append).run(exit_when_idle=True)


def _assert_each_once(p: Pipeline, bookings: int) -> None:
    """One insert and one update per booking, one price field row per update, chain intact."""
    table = p.schema.bookings_table
    rows = p.warehouse(
        "SELECT action, count(*), count(DISTINCT (commit_lsn, sequence)) FROM audit.row_changes "
        "WHERE schema_name = %s AND table_name = %s GROUP BY action ORDER BY action",
        (table.schema, table.name),
    )
    assert rows == [("insert", bookings, bookings), ("update", bookings, bookings)]
    fields = p.warehouse(
        "SELECT f.field, f.old_value, f.new_value, count(*) FROM audit.field_changes f "
        "JOIN audit.row_changes r ON r.id = f.change_id "
        "WHERE r.schema_name = %s AND r.table_name = %s AND r.action = 'update' GROUP BY 1, 2, 3",
        (table.schema, table.name),
    )
    assert fields == [(p.schema.names["price"], "100.00", "120.00", bookings)]
    report = verify_chain(p.warehouse_dsn)
    assert report.problems == ()
    total = p.warehouse("SELECT count(*) FROM audit.row_changes")[0][0]
    assert report.entries == total


def test_copies_within_one_batch_are_stored_once(pipeline: Pipeline) -> None:
    _book_and_reprice(pipeline)
    pipeline.capture()
    topic = _bookings_topic(pipeline)
    update = [r for r in _read_topic(pipeline, topic) if r.key is not None][-1]
    # Two more copies of the one-field UPDATE, behind the original on its own partition.
    _produce(pipeline, topic, [update, update], {update.partition: update.partition})

    stats = _run_writer(pipeline)

    _assert_each_once(pipeline, bookings=1)
    assert stats.duplicates == 2


def test_copies_in_later_batches_are_stored_once(pipeline: Pipeline) -> None:
    _book_and_reprice(pipeline)
    pipeline.capture()
    first = _run_writer(pipeline)
    assert first.duplicates == 0
    topic = _bookings_topic(pipeline)
    everything = _read_topic(pipeline, topic)
    same = {r.partition: r.partition for r in everything}
    _produce(pipeline, topic, everything, same)

    # The same group reads only the copies; a new group with one record per batch reads all.
    again = _run_writer(pipeline)
    one_by_one = _run_writer(pipeline, batch_size=1, group_id=pipeline.group_id + "-single")

    _assert_each_once(pipeline, bookings=1)
    assert (again.written, again.duplicates) == (0, len(everything))
    customer = 1  # the seed's customer, on its own topic, which the new group reads again too
    assert (one_by_one.written, one_by_one.duplicates) == (0, 2 * len(everything) + customer)


def test_copies_on_other_partitions_read_by_two_writers_are_stored_once(
    pipeline: Pipeline,
) -> None:
    """A capture that re-sends after the topic gained partitions puts a copy on another
    partition, which another member of the group owns after a rebalance. Two writers of one
    group run at once over originals and copies (copies in reverse order, so their row locks
    cross); each event is stored once and neither writer stops."""
    bookings = 300
    _book_and_reprice(pipeline, bookings)
    pipeline.capture()
    topic = _bookings_topic(pipeline)
    originals = _read_topic(pipeline, topic)
    partitions = sorted({r.partition for r in originals} | {0, 1, 2})
    shifted = {p: partitions[(i + 1) % len(partitions)] for i, p in enumerate(partitions)}
    _produce(pipeline, topic, list(reversed(originals)), shifted)

    results: list[WriterStats] = []
    errors: list[BaseException] = []

    def member() -> None:
        try:
            results.append(_run_writer(pipeline, batch_size=50))
        except BaseException as exc:  # handed to the test thread, which fails on it
            errors.append(exc)

    writers = [threading.Thread(target=member) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
    assert errors == []
    assert len(results) == 2

    # A writer that left before the other finished may have handed it re-reads: run the group
    # once more to be sure every offset is committed, then count.
    results.append(_run_writer(pipeline))
    _assert_each_once(pipeline, bookings)
    customers = 1
    assert sum(r.written for r in results) == 2 * bookings + customers
    # Every copy was dropped; records re-read after the rebalance were dropped as well.
    assert sum(r.duplicates for r in results) >= len(originals)


@pytest.fixture
def warehouse_dsn(stack: StackEnv) -> Iterator[str]:
    with scratch_database(stack.admin_dsn) as dsn:
        init_warehouse(dsn)
        yield dsn


@pytest.mark.parametrize("size", [2, 100], ids=["pipelined", "copy"])
def test_a_batch_sent_straight_in_that_holds_stored_events_is_written_again_without_them(
    warehouse_dsn: str, size: int
) -> None:
    """In a running stream a batch goes in without the check for stored copies; when it holds
    one, the unique key refuses the batch and the writer writes it again, checking first. (A
    batch of two goes in as pipelined INSERTs, a larger one by COPY.)"""
    writer = WarehouseWriter(warehouse_dsn)
    try:
        first = [prepare_row(ENTRY._replace(sequence=i), 1000 + i, 0) for i in range(5)]
        assert writer.write(first, []) == 5
        clean = [prepare_row(ENTRY._replace(sequence=i), 2000 + i, 0) for i in range(5, 10)]
        assert writer.write(clean, []) == 5  # after this one, the next goes straight in
        # The last stored event, then new ones.
        mixed = [prepare_row(ENTRY._replace(sequence=i), 3000 + i, 0) for i in range(9, 9 + size)]
        assert writer.write(mixed, []) == size - 1
    finally:
        writer.close()
    total = 9 + size
    with psycopg.connect(warehouse_dsn) as conn:
        counts = conn.execute(
            "SELECT count(*), count(DISTINCT sequence) FROM audit.row_changes"
        ).fetchone()
    assert counts == (total, total)
    report = verify_chain(warehouse_dsn)
    assert (report.problems, report.entries) == ((), total)
