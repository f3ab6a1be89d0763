"""Events over Kafka's message limit (a 2 MB note, a 1 MB photo) go through whole, as chunks,
and the changes behind them are not held up."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from bookaudit.kafka.chunks import CHUNK_HEADER
from tests.integration.harness import Pipeline

pytestmark = pytest.mark.slow

# In the schema's own PostgreSQL schema, naming a booking by the schema's own key.
PHOTOS = """
CREATE TABLE {photos} (
    photo_no   bigint PRIMARY KEY,
    booking_id {key_type} NOT NULL REFERENCES {bookings} ({key}),
    caption    text,
    image      bytea
)
"""


def chunked_messages(p: Pipeline, table: str) -> int:
    """How many messages on the table's topic carry a chunk header."""
    topic = p.topic(table)
    consumer = Consumer({"bootstrap.servers": p.stack.kafka_bootstrap, "group.id": "probe"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        found = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            read = 0
            while read < high - low:
                msg = consumer.poll(5)
                assert msg is not None and msg.error() is None
                read += 1
                found += any(h[0] == CHUNK_HEADER for h in msg.headers() or [])
        return found
    finally:
        consumer.close()


def test_two_mb_text_and_one_mb_bytea_updates_arrive_whole(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    bookings, notes = p.schema.bookings_table, p.schema.notes
    key, by_booking = p.schema.booking_key, notes.booking_column
    assert by_booking is not None
    photos = f"{bookings.schema}.site_photos"
    names = {
        "photos": sql.Identifier(bookings.schema, "site_photos"),
        "bookings": sql.Identifier(bookings.schema, bookings.name),
        "key": sql.Identifier(key),
        "key_type": sql.SQL(p.column_type(str(bookings), key)),
        "notes": sql.Identifier(notes.table.schema, notes.table.name),
        "by_booking": sql.Identifier(by_booking),
    }
    p.migrate(sql.SQL(PHOTOS).format(**names))
    p.install([photos])
    [booking] = p.seed(1)
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('finn', role => 'fieldworker')")
        conn.execute(p.schema.writes.note, {"booking": booking, "body": "short"})
        conn.execute(
            sql.SQL("INSERT INTO {photos} VALUES (7, %s, 'boiler', '\\x00'::bytea)").format(
                **names
            ),
            (booking,),
        )
    p.flow()
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('finn', role => 'fieldworker')")
        # 2,000,000 characters of text that compresses poorly, and 1,000,000 bytes of bytea
        # (2,000,002 characters as hex, in both the before and the after image of the next edit).
        conn.execute(
            sql.SQL(
                "UPDATE {notes} SET body = (SELECT string_agg(md5(g::text), '') "
                "FROM generate_series(1, 62500) g) WHERE {by_booking} = %s"
            ).format(**names),
            (booking,),
        )
        conn.execute(
            sql.SQL(
                "UPDATE {photos} SET image = (SELECT decode(string_agg(md5(g::text), ''), 'hex') "
                "FROM generate_series(1, 62500) g) WHERE photo_no = 7"
            ).format(**names)
        )
        conn.execute(
            sql.SQL("UPDATE {photos} SET caption = 'boiler, after' WHERE photo_no = 7").format(
                **names
            )
        )
        # Ordinary changes right behind the big ones.
        p.schema.set_price(conn, [booking], "120.00")
        expected = conn.execute(
            sql.SQL(
                "SELECT (SELECT body FROM {notes} WHERE {by_booking} = %s), "
                "(SELECT image::text FROM {photos} WHERE photo_no = 7)"
            ).format(**names),
            (booking,),
        ).fetchone()
    assert expected is not None
    note, image = expected
    assert len(note) == 2_000_000 and len(image) == 2_000_002

    stats = p.capture()
    assert stats.changes == 4
    writer = p.consume()
    assert writer.dead_letters == 0
    assert chunked_messages(p, str(notes.table)) >= 3
    assert chunked_messages(p, photos) >= 2 * 3  # the bytea edit and the caption edit

    rows = p.warehouse(
        "SELECT schema_name || '.' || table_name, after ->> 'body', after ->> 'image', "
        "before ->> 'image', after ->> %s FROM audit.row_changes WHERE action = 'update' "
        "ORDER BY commit_lsn, sequence",
        (p.schema.names["price"],),
    )
    assert [r[0] for r in rows] == [str(notes.table), photos, photos, str(bookings)]
    assert rows[0][1] == note
    assert rows[1][2] == image and rows[1][3] == "\\x00"
    assert rows[2][2] == image and rows[2][3] == image
    assert rows[3][4] == "120.00"
    fields = p.warehouse(
        "SELECT f.new_value FROM audit.field_changes f JOIN audit.row_changes r "
        "ON r.id = f.change_id WHERE r.schema_name = %s AND r.table_name = %s "
        "AND f.field = 'body' AND r.action = 'update'",
        (notes.table.schema, notes.table.name),
    )
    assert fields == [(note,)]

    # The history command returns the exact value, not a cut one.
    history = json.loads(p.cli("history", "booking", str(booking), "--format", "json").stdout)
    assert note in [h["new"] for h in history]
    assert p.cli("warehouse", "verify").returncode == 0
