"""End to end on the real stack: source change → Kafka → warehouse entry with actor and values,
on each schema in both capture modes."""

from __future__ import annotations

import json

import psycopg

from tests.integration.harness import Pipeline
from tests.integration.workloads import book, schema_sql


def _book(p: Pipeline, price: str = "100.00") -> str:
    [booking] = book(p, price)
    return booking


def test_insert_update_delete_carry_actor_and_old_new_values(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    names, key = p.schema.names, p.schema.entity_map.booking.key
    booking = _book(p, "149.00")
    with p.source() as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('alice', role => 'admin', reason => 'extra unit', "
            "approval_ref => 'APR-9', request_id => 'r-1')"
        )
        conn.execute(
            schema_sql(p.schema, "UPDATE {bookings} SET {price} = 189.50 WHERE {key} = %s"),
            (booking,),
        )
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('bob', role => 'fieldworker')")
        conn.execute(p.schema.writes.note, {"booking": booking, "body": "hi"})
        conn.execute(schema_sql(p.schema, "DELETE FROM {notes} WHERE {note_booking} = %s"),
                     (booking,))  # fmt: skip
    p.flow()

    rows = p.warehouse(
        "SELECT table_name, action, actor, actor_role, reason, approval_ref, request_id, "
        "row_key, actor_origin FROM audit.row_changes ORDER BY commit_lsn, sequence"
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (names["customers"], "insert", "dana", "dispatcher"),
        (names["bookings"], "insert", "dana", "dispatcher"),
        (names["bookings"], "update", "alice", "admin"),
        (names["notes"], "insert", "bob", "fieldworker"),
        (names["notes"], "delete", "bob", "fieldworker"),
    ]
    update = rows[2]
    assert update[4:7] == ("extra unit", "APR-9", "r-1")
    assert update[7] == {key: booking}
    assert update[8] == "application"

    fields = p.warehouse(
        "SELECT action, field, old_value, new_value FROM audit.field_history "
        "WHERE table_name IN (%s, %s) AND field IN (%s, 'body') "
        "ORDER BY commit_lsn, sequence",
        (names["bookings"], names["notes"], names["price"]),
    )
    assert fields == [
        ("insert", names["price"], None, "149.00"),
        ("update", names["price"], "149.00", "189.50"),
        ("insert", "body", None, "hi"),
        ("delete", "body", "hi", None),
    ]
    # An update records only the fields that changed.
    changed = p.warehouse(
        "SELECT field FROM audit.field_history WHERE table_name = %s AND action = 'update'",
        (names["bookings"],),
    )
    assert changed == [(names["price"],)]


def test_change_without_actor_is_attributed_to_db_role_and_application(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    booking = _book(p)
    # Someone with a login of their own (here the owner) edits in psql, outside the application.
    with p.owner(application_name="psql-hotfix") as conn:
        conn.execute(
            schema_sql(p.schema, "UPDATE {bookings} SET {status} = 'cancelled' WHERE {key} = %s"),
            (booking,),
        )
    p.flow()
    row = p.warehouse(
        "SELECT actor, db_user, application, client_addr, actor_origin FROM audit.row_changes "
        "WHERE table_name = %s AND action = 'update'",
        (p.schema.names["bookings"],),
    )
    assert row == [(None, "postgres", "psql-hotfix", "127.0.0.1", "db_session")]
    shown = p.warehouse("SELECT DISTINCT actor FROM audit.field_history WHERE action = 'update'")
    assert shown == [("postgres (db role via psql-hotfix)",)]


def test_numeric_prices_stay_exact(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    prices = ["0.10", "0.30", "1234567890.23", "99999999.99", "1.00"]
    ids = [_book(p, price) for price in prices]
    p.flow()
    price, key = p.schema.names["price"], p.schema.entity_map.booking.key
    stored = p.warehouse(
        "SELECT row_key ->> %s, after ->> %s FROM audit.row_changes "
        "WHERE table_name = %s ORDER BY commit_lsn",
        (key, price, p.schema.names["bookings"]),
    )
    assert stored == list(zip(ids, prices, strict=True))
    total = p.warehouse(
        "SELECT sum((after ->> %s)::numeric)::text FROM audit.row_changes WHERE table_name = %s",
        (price, p.schema.names["bookings"]),
    )
    assert total == [("1334567891.62",)]


def test_replaying_the_topics_adds_nothing(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    _book(p)
    p.flow()
    before = p.warehouse("SELECT count(*) FROM audit.row_changes")
    fields_before = p.warehouse("SELECT count(*) FROM audit.field_changes")
    p.consume(group_id=p.group_id + "-replay")  # reads every topic from 0 again
    assert p.warehouse("SELECT count(*) FROM audit.row_changes") == before == [(2,)]
    assert p.warehouse("SELECT count(*) FROM audit.field_changes") == fields_before


def test_history_cli_prints_entries_oldest_first(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    booking = _book(p, "149.00")
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        conn.execute(
            schema_sql(p.schema, "UPDATE {bookings} SET {price} = 189.50 WHERE {key} = %s"),
            (booking,),
        )
        conn.execute(
            p.schema.writes.invoice,
            {"booking": booking, "number": "INV-1", "amount": "189.50", "sent": None},
        )
    p.flow()
    out = p.cli("history", "booking", booking, "--format", "json").stdout
    entries = json.loads(out)
    assert all(
        set(e) == {"committed_at", "actor", "actor_role", "action", "table", "field", "old",
                   "new", "txid", "booking_id", "label", "change_id", "source", "approval_ref",
                   "reason"}
        for e in entries
    )  # fmt: skip
    price = [(e["actor"], e["old"], e["new"]) for e in entries
             if e["field"] == p.schema.names["price"]]  # fmt: skip
    assert price == [("dana", None, "149.00"), ("alice", "149.00", "189.50")]
    assert {e["table"] for e in entries} == {p.schema.names["bookings"], p.schema.names["invoices"]}
    assert [e["committed_at"] for e in entries] == sorted(e["committed_at"] for e in entries)
    table = p.cli("history", "booking", booking).stdout
    assert "149.00" in table and "189.50" in table and "alice" in table


def test_warehouse_rows_cannot_be_updated_or_deleted(schema_pipeline: Pipeline) -> None:
    _book(schema_pipeline)
    schema_pipeline.flow()
    for statement in (
        "UPDATE audit.row_changes SET actor = 'mallory'",
        "DELETE FROM audit.field_changes",
        "TRUNCATE audit.row_changes CASCADE",
    ):
        with psycopg.connect(schema_pipeline.warehouse_dsn) as conn:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{statement} was allowed")
