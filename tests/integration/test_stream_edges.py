"""Stream edge cases on the real stack: schema changes, composite keys, TOAST, poison records."""

from __future__ import annotations

from confluent_kafka import Producer

from tests.integration.harness import Pipeline


def test_alter_table_mid_stream_keeps_the_pipeline_running(pipeline: Pipeline) -> None:
    with pipeline.source() as conn:
        conn.execute("INSERT INTO customers (name) VALUES ('before alter')")
    pipeline.capture()
    with pipeline.owner() as conn:  # a migration, run by the schema's owner
        conn.execute("ALTER TABLE customers ADD COLUMN loyalty_tier text DEFAULT 'basic'")
    with pipeline.source() as conn:
        conn.execute("UPDATE customers SET loyalty_tier = 'gold' WHERE name = 'before alter'")
    pipeline.flow()
    rows = pipeline.warehouse(
        "SELECT action, field, old_value, new_value FROM audit.field_history "
        "WHERE table_name = 'customers' AND action = 'update'"
    )
    assert rows == [("update", "loyalty_tier", "basic", "gold")]


def test_composite_primary_key_is_the_event_key(pipeline: Pipeline) -> None:
    with pipeline.owner() as conn:
        conn.execute(
            "CREATE TABLE booking_lines (booking_id bigint, line int, price numeric(10,2), "
            "PRIMARY KEY (booking_id, line))"
        )
        conn.execute(f'GRANT SELECT, INSERT, UPDATE ON booking_lines TO "{pipeline.app_role}"')
    pipeline.install(["booking_lines"])
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice')")
        conn.execute("INSERT INTO booking_lines VALUES (7, 1, 10.00), (7, 2, 20.50)")
        conn.execute("UPDATE booking_lines SET price = 21.00 WHERE line = 2")
    pipeline.flow()
    keys = pipeline.warehouse(
        "SELECT action, row_key FROM audit.row_changes WHERE table_name = 'booking_lines' "
        "ORDER BY commit_lsn, sequence"
    )
    assert keys == [
        ("insert", {"booking_id": "7", "line": "1"}),
        ("insert", {"booking_id": "7", "line": "2"}),
        ("update", {"booking_id": "7", "line": "2"}),
    ]


def test_unchanged_toasted_value_is_kept_in_the_new_row(pipeline: Pipeline) -> None:
    with pipeline.source() as conn:
        conn.execute("INSERT INTO customers (name) VALUES ('toast')")
        conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price) "
            "SELECT id, 's', 'a', 1 FROM customers WHERE name = 'toast'"
        )
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) SELECT id, 'x', "
            "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i) FROM bookings"
        )
    with pipeline.source() as conn:
        conn.execute("UPDATE notes SET author = 'y'")
    pipeline.flow()
    rows = pipeline.warehouse(
        "SELECT length(after ->> 'body'), after ->> 'body' = before ->> 'body' "
        "FROM audit.row_changes WHERE table_name = 'notes' AND action = 'update'"
    )
    assert rows == [(32 * 400, True)]
    fields = pipeline.warehouse(
        "SELECT field FROM audit.field_history WHERE table_name = 'notes' AND action = 'update'"
    )
    assert fields == [("author",)]


def test_poison_record_is_dead_lettered_and_the_writer_moves_on(pipeline: Pipeline) -> None:
    with pipeline.source() as conn:
        conn.execute("INSERT INTO customers (name) VALUES ('first')")
    pipeline.capture()
    topic = f"{pipeline.prefix}.public.customers"
    producer = Producer({"bootstrap.servers": pipeline.stack.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"\x00not avro at all", partition=0)
    producer.flush(10)
    with pipeline.source() as conn:
        conn.execute("INSERT INTO customers (name) VALUES ('second')")
    pipeline.flow()
    names = pipeline.warehouse("SELECT after ->> 'name' FROM audit.row_changes ORDER BY commit_lsn")
    assert names == [("first",), ("second",)]
    dead = pipeline.warehouse(
        "SELECT kafka_topic, kafka_partition, value, error FROM audit.dead_letters"
    )
    assert len(dead) == 1
    assert dead[0][:3] == (topic, 0, b"\x00not avro at all")
    assert f"{topic}[0]@" in dead[0][3]
