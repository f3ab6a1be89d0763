"""Stream edge cases on the real stack: schema changes, composite keys, TOAST, poison records,
on each schema in both capture modes."""

from __future__ import annotations

import hashlib

from confluent_kafka import Producer
from psycopg import sql

from tests.integration.harness import Pipeline
from tests.integration.schemas import Key

# The TOAST test's edit of a note that leaves its body alone: the sample's notes have an author;
# the jobs schema's notes have only their job, so the edit moves the note to another job.
NOTE_EDITS = {
    "sample": ("UPDATE notes SET author = 'y'", "author"),
    "jobs": ("UPDATE ops.job_notes SET job_ref = %(other)s", "job_ref"),
}


def _customer_key(p: Pipeline) -> str:
    customer = p.schema.entity_map.customer
    assert customer is not None and customer.key is not None
    return customer.key


def _add_customer(p: Pipeline, name: str) -> Key:
    with p.source() as conn:
        row = conn.execute(p.schema.writes.customer, {"name": name}).fetchone()
    assert row is not None
    key: Key = row[0]
    return key


def test_alter_table_mid_stream_keeps_the_pipeline_running(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    customers = p.schema.customers_table
    table = sql.Identifier(customers.schema, customers.name)
    customer = _add_customer(p, "before alter")
    p.capture()
    with p.owner() as conn:  # a migration, run by the schema's owner
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN loyalty_tier text DEFAULT 'basic'").format(table)
        )
    with p.source() as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET loyalty_tier = 'gold' WHERE {} = %s").format(
                table, sql.Identifier(_customer_key(p))
            ),
            (customer,),
        )
    p.flow()
    rows = p.warehouse(
        "SELECT action, field, old_value, new_value FROM audit.field_history "
        "WHERE schema_name = %s AND table_name = %s AND action = 'update'",
        (customers.schema, customers.name),
    )
    assert rows == [("update", "loyalty_tier", "basic", "gold")]


def test_composite_primary_key_is_the_event_key(schema_pipeline: Pipeline) -> None:
    """A key of the schema's booking key (bigint or text) and a line number."""
    p = schema_pipeline
    bookings = p.schema.bookings_table
    key_type = p.column_type(str(bookings), p.schema.booking_key)
    lines = sql.Identifier(bookings.schema, "booking_lines")
    [booking] = p.seed(1)
    with p.owner() as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (booking_id {}, line int, price numeric(10,2), "
                "PRIMARY KEY (booking_id, line))"
            ).format(lines, sql.SQL(key_type))
        )
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
                lines, sql.Identifier(p.app_role)
            )
        )
    p.install([f"{bookings.schema}.booking_lines"])
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice')")
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (%(b)s, 1, 10.00), (%(b)s, 2, 20.50)").format(lines),
            {"b": booking},
        )
        conn.execute(sql.SQL("UPDATE {} SET price = 21.00 WHERE line = 2").format(lines))
    p.flow()
    keys = p.warehouse(
        "SELECT action, row_key FROM audit.row_changes WHERE schema_name = %s "
        "AND table_name = 'booking_lines' ORDER BY commit_lsn, sequence",
        (bookings.schema,),
    )
    assert keys == [
        ("insert", {"booking_id": str(booking), "line": "1"}),
        ("insert", {"booking_id": str(booking), "line": "2"}),
        ("update", {"booking_id": str(booking), "line": "2"}),
    ]


def test_unchanged_toasted_value_is_kept_in_the_new_row(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    notes = p.schema.notes.table
    body = "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 401))
    booking, other = p.seed(2)
    with p.source() as conn:
        conn.execute(p.schema.writes.note, {"booking": booking, "body": body})
    edit, field = NOTE_EDITS[p.schema.name]
    with p.source() as conn:
        conn.execute(edit, {"other": other})
    p.flow()
    rows = p.warehouse(
        "SELECT length(after ->> 'body'), after ->> 'body' = before ->> 'body' "
        "FROM audit.row_changes WHERE schema_name = %s AND table_name = %s AND action = 'update'",
        (notes.schema, notes.name),
    )
    assert rows == [(32 * 400, True)]
    fields = p.warehouse(
        "SELECT field FROM audit.field_history WHERE schema_name = %s AND table_name = %s "
        "AND action = 'update'",
        (notes.schema, notes.name),
    )
    assert fields == [(field,)]


def test_poison_record_is_dead_lettered_and_the_writer_moves_on(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    customers = p.schema.customers_table
    first = _add_customer(p, "first")
    p.capture()
    topic = p.topic(str(customers))
    producer = Producer({"bootstrap.servers": p.stack.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"\x00not avro at all", partition=0)
    producer.flush(10)
    second = _add_customer(p, "second")
    p.flow()
    keys = p.warehouse("SELECT row_key FROM audit.row_changes ORDER BY commit_lsn")
    key = _customer_key(p)
    assert keys == [({key: str(first)},), ({key: str(second)},)]
    dead = p.warehouse("SELECT kafka_topic, kafka_partition, value, error FROM audit.dead_letters")
    assert len(dead) == 1
    assert dead[0][:3] == (topic, 0, b"\x00not avro at all")
    assert f"{topic}[0]@" in dead[0][3]
