"""Events over Kafka's message limit (a 2 MB note, a 1 MB photo) go through whole, as chunks,
and the changes behind them are not held up."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from bookaudit.kafka.chunks import CHUNK_HEADER
from tests.integration.harness import Pipeline

pytestmark = pytest.mark.slow

PHOTOS = """
CREATE TABLE site_photos (
    photo_no   bigint PRIMARY KEY,
    booking_id bigint NOT NULL REFERENCES bookings (id),
    caption    text,
    image      bytea
)
"""


def chunked_messages(p: Pipeline, table: str) -> int:
    """How many messages on the table's topic carry a chunk header."""
    topic = f"{p.prefix}.public.{table}"
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


def test_two_mb_text_and_one_mb_bytea_updates_arrive_whole(pipeline: Pipeline) -> None:
    p = pipeline
    p.migrate(PHOTOS)
    p.install(["site_photos"])
    [booking] = p.seed(1)
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('finn', role => 'fieldworker')")
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'finn', 'short')", (booking,)
        )
        conn.execute("INSERT INTO site_photos VALUES (7, %s, 'boiler', '\\x00'::bytea)", (booking,))
    p.flow()
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('finn', role => 'fieldworker')")
        # 2,000,000 characters of text that compresses poorly, and 1,000,000 bytes of bytea
        # (2,000,002 characters as hex, in both the before and the after image of the next edit).
        conn.execute(
            "UPDATE notes SET body = (SELECT string_agg(md5(g::text), '') "
            "FROM generate_series(1, 62500) g) WHERE booking_id = %s",
            (booking,),
        )
        conn.execute(
            "UPDATE site_photos SET image = (SELECT decode(string_agg(md5(g::text), ''), 'hex') "
            "FROM generate_series(1, 62500) g) WHERE photo_no = 7"
        )
        conn.execute("UPDATE site_photos SET caption = 'boiler, after' WHERE photo_no = 7")
        # Ordinary changes right behind the big ones.
        conn.execute("UPDATE bookings SET price = 120.00 WHERE id = %s", (booking,))
        expected = conn.execute(
            "SELECT (SELECT body FROM notes WHERE booking_id = %s), "
            "(SELECT image::text FROM site_photos WHERE photo_no = 7)",
            (booking,),
        ).fetchone()
    assert expected is not None
    note, image = expected
    assert len(note) == 2_000_000 and len(image) == 2_000_002

    stats = p.capture()
    assert stats.changes == 4
    writer = p.consume()
    assert writer.dead_letters == 0
    assert chunked_messages(p, "notes") >= 3
    assert chunked_messages(p, "site_photos") >= 2 * 3  # the bytea edit and the caption edit

    rows = p.warehouse(
        "SELECT table_name, after ->> 'body', after ->> 'image', before ->> 'image', "
        "after ->> 'price' FROM audit.row_changes WHERE action = 'update' ORDER BY commit_lsn, "
        "sequence"
    )
    assert [r[0] for r in rows] == ["notes", "site_photos", "site_photos", "bookings"]
    assert rows[0][1] == note
    assert rows[1][2] == image and rows[1][3] == "\\x00"
    assert rows[2][2] == image and rows[2][3] == image
    assert rows[3][4] == "120.00"
    fields = p.warehouse(
        "SELECT f.new_value FROM audit.field_changes f JOIN audit.row_changes r "
        "ON r.id = f.change_id WHERE r.table_name = 'notes' AND f.field = 'body' "
        "AND r.action = 'update'"
    )
    assert fields == [(note,)]

    # The history command returns the exact value, not a cut one.
    history = json.loads(p.cli("history", "booking", str(booking), "--format", "json").stdout)
    assert note in [h["new"] for h in history]
    assert p.cli("warehouse", "verify").returncode == 0
