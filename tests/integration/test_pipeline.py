"""End to end on the real stack: source change → Kafka → warehouse entry with actor and values."""

from __future__ import annotations

import json

import psycopg

from tests.integration.harness import Pipeline


def _customer(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute(
        "INSERT INTO customers (name) VALUES ('Test Customer') RETURNING id"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def _book(p: Pipeline, price: str = "100.00") -> int:
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        customer = _customer(conn)
        row = conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price) "
            "VALUES (%s, 'Boiler check', 'Elm St 4', %s::numeric) RETURNING id",
            (customer, price),
        ).fetchone()
        assert row is not None
        return int(str(row[0]))


def test_insert_update_delete_carry_actor_and_old_new_values(pipeline: Pipeline) -> None:
    booking = _book(pipeline, "149.00")
    with pipeline.source() as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('alice', role => 'admin', reason => 'extra unit', "
            "approval_ref => 'APR-9', request_id => 'r-1')"
        )
        conn.execute("UPDATE bookings SET price = 189.50 WHERE id = %s", (booking,))
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('bob', role => 'fieldworker')")
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'bob', 'hi')", (booking,)
        )
        conn.execute("DELETE FROM notes WHERE booking_id = %s", (booking,))
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT table_name, action, actor, actor_role, reason, approval_ref, request_id, "
        "row_key, actor_origin FROM audit.row_changes ORDER BY commit_lsn, sequence"
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("customers", "insert", "dana", "dispatcher"),
        ("bookings", "insert", "dana", "dispatcher"),
        ("bookings", "update", "alice", "admin"),
        ("notes", "insert", "bob", "fieldworker"),
        ("notes", "delete", "bob", "fieldworker"),
    ]
    update = rows[2]
    assert update[4:7] == ("extra unit", "APR-9", "r-1")
    assert update[7] == {"id": str(booking)}
    assert update[8] == "application"

    fields = pipeline.warehouse(
        "SELECT action, field, old_value, new_value FROM audit.field_history "
        "WHERE table_name IN ('bookings', 'notes') AND field IN ('price', 'body') "
        "ORDER BY commit_lsn, sequence"
    )
    assert fields == [
        ("insert", "price", None, "149.00"),
        ("update", "price", "149.00", "189.50"),
        ("insert", "body", None, "hi"),
        ("delete", "body", "hi", None),
    ]
    # An update records only the fields that changed.
    changed = pipeline.warehouse(
        "SELECT field FROM audit.field_history WHERE table_name = 'bookings' AND action = 'update'"
    )
    assert changed == [("price",)]


def test_change_without_actor_is_attributed_to_db_role_and_application(
    pipeline: Pipeline,
) -> None:
    booking = _book(pipeline)
    # Someone with a login of their own (here the owner) edits in psql, outside the application.
    with pipeline.owner(application_name="psql-hotfix") as conn:
        conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = %s", (booking,))
    pipeline.flow()
    row = pipeline.warehouse(
        "SELECT actor, db_user, application, client_addr, actor_origin FROM audit.row_changes "
        "WHERE table_name = 'bookings' AND action = 'update'"
    )
    assert row == [(None, "postgres", "psql-hotfix", "127.0.0.1", "db_session")]
    shown = pipeline.warehouse(
        "SELECT DISTINCT actor FROM audit.field_history WHERE action = 'update'"
    )
    assert shown == [("postgres (db role via psql-hotfix)",)]


def test_numeric_prices_stay_exact(pipeline: Pipeline) -> None:
    prices = ["0.10", "0.30", "1234567890.23", "99999999.99", "1.00"]
    ids = [_book(pipeline, price) for price in prices]
    pipeline.flow()
    stored = pipeline.warehouse(
        "SELECT row_key ->> 'id', after ->> 'price' FROM audit.row_changes "
        "WHERE table_name = 'bookings' ORDER BY commit_lsn"
    )
    assert stored == [(str(i), p) for i, p in zip(ids, prices, strict=True)]
    total = pipeline.warehouse(
        "SELECT sum((after ->> 'price')::numeric)::text FROM audit.row_changes "
        "WHERE table_name = 'bookings'"
    )
    assert total == [("1334567891.62",)]


def test_replaying_the_topics_adds_nothing(pipeline: Pipeline) -> None:
    _book(pipeline)
    pipeline.flow()
    before = pipeline.warehouse("SELECT count(*) FROM audit.row_changes")
    fields_before = pipeline.warehouse("SELECT count(*) FROM audit.field_changes")
    pipeline.consume(group_id=pipeline.group_id + "-replay")  # reads every topic from 0 again
    assert pipeline.warehouse("SELECT count(*) FROM audit.row_changes") == before == [(2,)]
    assert pipeline.warehouse("SELECT count(*) FROM audit.field_changes") == fields_before


def test_history_cli_prints_entries_oldest_first(pipeline: Pipeline) -> None:
    booking = _book(pipeline, "149.00")
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        conn.execute("UPDATE bookings SET price = 189.50 WHERE id = %s", (booking,))
        conn.execute(
            "INSERT INTO invoices (booking_id, number, amount, status) "
            "VALUES (%s, 'INV-1', 189.50, 'sent')",
            (booking,),
        )
    pipeline.flow()
    out = pipeline.cli("history", "booking", str(booking), "--format", "json").stdout
    entries = json.loads(out)
    assert all(
        set(e) == {"committed_at", "actor", "actor_role", "action", "table", "field", "old",
                   "new", "txid", "booking_id", "label", "change_id", "source", "approval_ref",
                   "reason"}
        for e in entries
    )  # fmt: skip
    price = [(e["actor"], e["old"], e["new"]) for e in entries if e["field"] == "price"]
    assert price == [("dana", None, "149.00"), ("alice", "149.00", "189.50")]
    assert {e["table"] for e in entries} == {"bookings", "invoices"}
    assert [e["committed_at"] for e in entries] == sorted(e["committed_at"] for e in entries)
    table = pipeline.cli("history", "booking", str(booking)).stdout
    assert "149.00" in table and "189.50" in table and "alice" in table


def test_warehouse_rows_cannot_be_updated_or_deleted(pipeline: Pipeline) -> None:
    _book(pipeline)
    pipeline.flow()
    for statement in (
        "UPDATE audit.row_changes SET actor = 'mallory'",
        "DELETE FROM audit.field_changes",
        "TRUNCATE audit.row_changes CASCADE",
    ):
        with psycopg.connect(pipeline.warehouse_dsn) as conn:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{statement} was allowed")
