"""Writes and reads several integration test modules share: bookings seeded and edited without
approval, application transactions by a named actor, the labelled timeline workload, a topic
read from its start to its end, and a table's source rows beside the same table replayed from
its audit entries."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition
from psycopg import sql

from bookaudit.actor import Actor, set_actor
from bookaudit.consumers._kafka import to_record
from bookaudit.consumers.records import Record
from bookaudit.entity_map import Entity, TableRef
from bookaudit.kafka.alert import decode_alert
from tests.integration.harness import Pipeline
from tests.integration.schemas import SAMPLE, Key, Schema

# A statement's parameters, by name, as psycopg takes them.
Params = Mapping[str, object] | None


def topic_records(p: Pipeline, topic: str) -> list[Record]:
    """Every record on a topic, read from the start to its current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": p.stack.kafka_bootstrap,
            "group.id": f"{p.name}-probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        ends = {}
        for part in metadata.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
            if high > 0:
                ends[part] = high
        consumer.assign([TopicPartition(topic, part, 0) for part in ends])
        records = []
        while ends:
            msg = consumer.poll(10)
            assert msg is not None, f"{topic} stopped before its end"
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err.str()
                ends.pop(int(msg.partition() or 0), None)
                continue
            part, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            records.append(to_record(msg))
            if offset + 1 >= ends.get(part, 0):
                ends.pop(part, None)
        return records
    finally:
        consumer.close()


def alert_ids_on_topic(p: Pipeline) -> list[str]:
    return [
        str(decode_alert(r.value)["alert_id"])
        for r in topic_records(p, p.alerts_topic)
        if r.value is not None
    ]


def seed_bookings(p: Pipeline, count: int) -> list[Key]:
    """`count` bookings of one customer at 100.00, by a dispatcher, in the schema's own tables."""
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        return p.schema.seed(conn, count, "100", name="C")


def unapproved_edits(p: Pipeline, bookings: list[Key], rounds: int) -> None:
    """One transaction per round: a dispatcher nudges every booking's price by a cent."""
    nudge = p.schema.set_price_sql("{price} + 0.01")
    with p.source() as conn:
        for _ in range(rounds):
            with conn.transaction():
                conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
                conn.execute(nudge, {"keys": bookings})


# The labelled workload's story, per schema: (actor, role, statements, set_actor extras) with
# %(b)s the main booking, %(g)s the one that is deleted, %(c)s their customer. The jobs schema
# assigns through the job's technician column, sends an invoice by issuing it, and pays the
# invoice rather than the job.
_Tx = tuple[str, str, tuple[str, ...], dict[str, str]]
_DISPATCH = ("dana", "dispatcher")
LABELLED: dict[str, tuple[dict[str, Key], tuple[_Tx, ...], str]] = {
    "sample": (
        {"main": 501, "gone": 502},
        (
            (*_DISPATCH, ("INSERT INTO bookings (id, customer_id, service, address, price) VALUES "
             "(%(b)s, %(c)s, 'Annual HVAC', 'Dam 1', 149.00), "
             "(%(g)s, %(c)s, 'Leak', 'Dam 2', 80.00)",), {}),
            (*_DISPATCH, ("UPDATE bookings SET scheduled_start = '2026-11-27 08:00+00', "
             "scheduled_end = '2026-11-27 10:00+00' WHERE id = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE bookings SET scheduled_start = '2026-11-28 14:00+00', "
             "scheduled_end = '2026-11-28 16:00+00' WHERE id = %(b)s",), {}),
            ("alice", "admin", ("UPDATE bookings SET price = 189.50 WHERE id = %(b)s",),
             {"approval_ref": "APR-1042", "reason": "second unit"}),
            ("finn", "fieldworker", ("UPDATE bookings SET updated_at = now() WHERE id = %(b)s",),
             {}),
            (*_DISPATCH, ("UPDATE bookings SET status = 'confirmed' WHERE id = %(b)s",), {}),
            (*_DISPATCH, ("INSERT INTO assignments (booking_id, fieldworker) "
             "VALUES (%(b)s, 'finn')",), {}),
            (*_DISPATCH, ("DELETE FROM assignments WHERE booking_id = %(b)s",), {}),
            ("finn", "fieldworker", ("INSERT INTO notes (booking_id, author, body) "
             "VALUES (%(b)s, 'finn', 'Dog in yard')",), {}),
            ("olga", "billing", ("INSERT INTO invoices (booking_id, number, amount) "
             "VALUES (%(b)s, 'INV-501', 189.50)",), {}),
            ("olga", "billing", ("UPDATE invoices SET sent_at = now() WHERE booking_id = %(b)s",),
             {}),
            ("olga", "billing", ("INSERT INTO payments (booking_id, amount, method) "
             "VALUES (%(b)s, 189.50, 'card')",), {}),
            ("olga", "billing", ("INSERT INTO payments (booking_id, amount, method) "
             "VALUES (%(b)s, -20.00, 'card')",), {}),
            (*_DISPATCH, ("UPDATE bookings SET address = 'Dam 1A' WHERE id = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE bookings SET status = 'cancelled' WHERE id = %(b)s",), {}),
            (*_DISPATCH, ("DELETE FROM bookings WHERE id = %(g)s",), {}),
        ),
        "UPDATE bookings SET price = 99.00 WHERE id = %(b)s",
    ),
    "jobs": (
        {"main": "J-501", "gone": "J-502"},
        (
            (*_DISPATCH, ("INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) VALUES "
             "(%(b)s, %(c)s, 'Annual HVAC', 149.00), (%(g)s, %(c)s, 'Leak', 80.00)",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET window_from = '2026-11-27 08:00+00', "
             "window_to = '2026-11-27 10:00+00' WHERE job_no = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET window_from = '2026-11-28 14:00+00', "
             "window_to = '2026-11-28 16:00+00' WHERE job_no = %(b)s",), {}),
            ("alice", "admin", ("UPDATE ops.jobs SET quoted_total = 189.50 WHERE job_no = %(b)s",),
             {"approval_ref": "APR-1042", "reason": "second unit"}),
            ("finn", "fieldworker", ("UPDATE ops.jobs SET modified_at = now() "
             "WHERE job_no = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET state = 'confirmed' WHERE job_no = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET technician = 'finn' WHERE job_no = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET technician = NULL WHERE job_no = %(b)s",), {}),
            ("finn", "fieldworker", ("INSERT INTO ops.job_notes (job_ref, body) "
             "VALUES (%(b)s, 'Dog in yard')",), {}),
            ("olga", "billing", ("INSERT INTO billing.invoices (job_ref, total) "
             "VALUES (%(b)s, 189.50)",), {}),
            ("olga", "billing", ("UPDATE billing.invoices SET issued_at = now() "
             "WHERE job_ref = %(b)s",), {}),
            ("olga", "billing", ("INSERT INTO billing.payments (invoice_ref, paid) "
             "SELECT invoice_no, 189.50 FROM billing.invoices WHERE job_ref = %(b)s",), {}),
            ("olga", "billing", ("INSERT INTO billing.payments (invoice_ref, paid) "
             "SELECT invoice_no, -20.00 FROM billing.invoices WHERE job_ref = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET title = 'Annual HVAC, 2 units' "
             "WHERE job_no = %(b)s",), {}),
            (*_DISPATCH, ("UPDATE ops.jobs SET state = 'void' WHERE job_no = %(b)s",), {}),
            (*_DISPATCH, ("DELETE FROM ops.jobs WHERE job_no = %(g)s",), {}),
        ),
        "UPDATE ops.jobs SET quoted_total = 99.00 WHERE job_no = %(b)s",
    ),
}  # fmt: skip


def write_as(dsn: str, actor: Actor, statements: Iterable[str], params: Params = None) -> None:
    """One application transaction on `dsn` by `actor`: `statements` in order, each with
    `params`."""
    with psycopg.connect(dsn) as conn:
        set_actor(conn, actor)
        for statement in statements:
            conn.execute(statement, params)


def write_labelled_workload(dsn: str, schema: Schema = SAMPLE) -> dict[str, Key]:
    """A booking's labelled life on `schema` (and a second booking, deleted), each step its own
    transaction by its actor, then a raw psql price edit; returns the bookings' and customer's
    keys."""
    ids, steps, raw_edit = LABELLED[schema.name]
    with psycopg.connect(dsn, autocommit=True) as conn:
        customer = schema.new_customer(conn, "Bo")
    params = {"b": ids["main"], "g": ids["gone"], "c": customer}
    for actor, role, statements, extra in steps:
        write_as(dsn, Actor(actor, role=role, **extra), statements, params)
        time.sleep(0.003)
    with psycopg.connect(dsn, autocommit=True, application_name="psql") as conn:
        conn.execute(raw_edit, params)
    return {**ids, "customer": customer}


# A table's rows as the source holds them, keyed by their primary key's values.
SourceState = dict[tuple[str | None, ...], dict[str, str | None]]


def text_rows(conn: psycopg.Connection[Any], query: str | sql.Composed) -> list[list[str | None]]:
    """Rows as each value's output text, the form pgoutput and the warehouse hold."""
    result = conn.execute(query).pgresult
    assert result is not None
    return [
        [
            None if (v := result.get_value(i, j)) is None else v.decode()
            for j in range(result.nfields)
        ]
        for i in range(result.ntuples)
    ]


def source_state(
    conn: psycopg.Connection[Any], table: sql.Composable, columns: Sequence[str], key: Sequence[str]
) -> SourceState:
    """`columns` of every row of `table`, as text, keyed by the values of its `key` columns."""
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), table
    )
    rows = [dict(zip(columns, r, strict=True)) for r in text_rows(conn, query)]
    return {tuple(r[c] for c in key): r for r in rows}


def replayed(
    p: Pipeline, table: str, key: Sequence[str]
) -> tuple[dict[tuple[str | None, ...], dict[str, Any]], Counter[str]]:
    """The table rebuilt from its audit entries in commit order, with how many entries of each
    action it took. Each update and delete must name the row as audited so far, old values and
    all: a change missing at a boundary breaks the chain (the next change's old row differs from
    the audited one); a change recorded twice breaks it too (its old row is already gone)."""
    entries = p.warehouse(
        "SELECT action, before, after, commit_lsn::text, sequence FROM audit.row_changes "
        "WHERE table_name = %s ORDER BY commit_lsn, sequence",
        (table,),
    )
    state: dict[tuple[str | None, ...], dict[str, Any]] = {}
    actions: Counter[str] = Counter()
    for action, before, after, lsn, seq in entries:
        actions[action] += 1
        where = f"{action} at {lsn}/{seq}"
        if action in ("existing", "insert"):
            row = tuple(after[c] for c in key)
            assert row not in state, f"{where}: row {row} is already in the audit (doubled)"
            state[row] = after
        elif action == "update":
            row = tuple(before[c] for c in key)
            assert state.get(row) == before, f"{where}: old row of {row} is not the audited one"
            del state[row]
            state[tuple(after[c] for c in key)] = after
        else:
            assert action == "delete", where
            row = tuple(before[c] for c in key)
            assert state.pop(row, None) == before, f"{where}: deleted row {row} not as audited"
    return state, actions


def _related(schema: Schema, kind: str) -> Entity:
    found = [e for e in schema.entity_map.related if e.kind == kind]
    assert found, f"the {schema.name} map has no {kind} table"
    return found[0]


def schema_sql(schema: Schema, template: str) -> sql.Composed:
    """`template` with the schema's own identifiers, read from its entity map: {bookings} (the
    booking table), {key}, {price}, {status}, {schedule}, {customer_ref}, {customers},
    {customer_key}, {notes}, {note_booking}, {invoices}, {invoice_booking}."""
    m = schema.entity_map
    booking, customer = m.booking, m.customer
    assert customer is not None and booking.key and customer.key and booking.customer_column
    notes, invoices = _related(schema, "note"), _related(schema, "invoice")
    assert notes.booking_column and invoices.booking_column

    def table(ref: TableRef) -> sql.Identifier:
        return sql.Identifier(ref.schema, ref.name)

    return sql.SQL(template).format(
        bookings=table(booking.table),
        key=sql.Identifier(booking.key),
        price=sql.Identifier(booking.fields.price[0]),
        status=sql.Identifier(booking.fields.status[0]),
        schedule=sql.Identifier(booking.fields.schedule[0]),
        customer_ref=sql.Identifier(booking.customer_column),
        customers=table(customer.table),
        customer_key=sql.Identifier(customer.key),
        notes=table(notes.table),
        note_booking=sql.Identifier(notes.booking_column),
        invoices=table(invoices.table),
        invoice_booking=sql.Identifier(invoices.booking_column),
    )


def booking_topic(p: Pipeline) -> str:
    """The Kafka topic of the pipeline's booking table: `<prefix>.<schema>.<table>`."""
    ref = p.schema.entity_map.booking.table
    return f"{p.prefix}.{ref.schema}.{ref.name}"


# A customer with a name the test chooses, and the column that holds it, per schema: the jobs
# schema's clients need a key of the application's making.
NAMED_CUSTOMER = {
    "sample": ("INSERT INTO customers (name) VALUES (%(name)s)", "name"),
    "jobs": (
        "INSERT INTO ops.clients (client_no, full_name) VALUES ('CL-' || %(name)s, %(name)s)",
        "full_name",
    ),
}


def add_customer(p: Pipeline, conn: psycopg.Connection[Any], name: str) -> None:
    """One customer named `name`, in the caller's transaction."""
    conn.execute(NAMED_CUSTOMER[p.schema.name][0], {"name": name})


def customer_names(p: Pipeline) -> list[tuple[str, int]]:
    """How many audit entries each customer got, by name."""
    column = NAMED_CUSTOMER[p.schema.name][1]
    return [
        (str(r[0]), int(r[1]))
        for r in p.warehouse(
            "SELECT after ->> %s, count(*) FROM audit.row_changes "
            "WHERE table_name = %s GROUP BY 1 ORDER BY 1",
            (column, p.schema.names["customers"]),
        )
    ]


def book(
    p: Pipeline,
    price: str = "100.00",
    bookings: int = 1,
    actor: str = "dana",
    role: str | None = "dispatcher",
) -> list[str]:
    """One application transaction by `actor`: a customer and its `bookings` bookings at
    `price`; returns their keys as text, in the order they were written."""
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor(%s, role => %s)", (actor, role))
        return [str(k) for k in p.schema.seed(conn, bookings, price)]
