"""Who changed it: every way a row can change carries the right actor, on the real stack, on
the sample schema and on one that shares none of its names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from tests.integration.harness import Pipeline
from tests.integration.schemas import Key

Conn = psycopg.Connection[tuple[Any, ...]]
SEED = "seed"

_CONTEXT = "table_name, action, actor, actor_role, reason, approval_ref, request_id, actor_origin"


def _changes(p: Pipeline, columns: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """`columns` of every audited row change in commit order, less the seed's."""
    return p.warehouse(
        f"SELECT {columns} FROM audit.row_changes WHERE actor IS DISTINCT FROM %s "
        "ORDER BY commit_lsn, sequence",
        (*params, SEED),
    )


def _xid(conn: Conn) -> int:
    """The running transaction's full (epoch-qualified) id."""
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def _price(p: Pipeline) -> str:
    return p.schema.entity_map.booking.fields.price[0]


def _status(p: Pipeline) -> str:
    return p.schema.entity_map.booking.fields.status[0]


def test_set_actor_once_covers_every_statement_of_the_transaction(
    schema_pipeline: Pipeline, booking: Key
) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    with p.source() as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('ann', role => 'dispatcher', reason => 'customer call', "
            "approval_ref => 'APR-1', request_id => 'req-1')"
        )
        conn.execute(w.status, {"booking": booking, "status": "scheduled"})
        conn.execute(w.schedule, {"booking": booking, "start": "2026-12-01 09:00+00"})
        conn.execute(w.assign, {"booking": booking, "fieldworker": "finn"})
        conn.execute(w.note, {"booking": booking, "body": "called"})
        conn.execute(w.price, {"booking": booking, "price": "120.00"})
    p.flow()

    context = ("ann", "dispatcher", "customer call", "APR-1", "req-1", "application")
    assert _changes(p, _CONTEXT) == [
        (n["bookings"], "update", *context),
        (n["bookings"], "update", *context),
        (*w.assigned_as, *context),
        (n["notes"], "insert", *context),
        (n["bookings"], "update", *context),
    ]


def test_set_actor_twice_in_one_transaction_attributes_each_change_to_its_context(
    schema_pipeline: Pipeline, booking: Key
) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    with p.source() as conn:
        xid = _xid(conn)
        conn.execute("SELECT bookaudit.set_actor('ann', role => 'dispatcher')")
        conn.execute(w.status, {"booking": booking, "status": "scheduled"})
        conn.execute("SELECT bookaudit.set_actor('bob', role => 'admin', approval_ref => 'APR-2')")
        conn.execute(w.price, {"booking": booking, "price": "150.00"})
        conn.execute(w.note, {"booking": booking, "body": "approved"})
        # Back to the first context: it must be announced again, not assumed.
        conn.execute("SELECT bookaudit.set_actor('ann', role => 'dispatcher')")
        conn.execute(w.status, {"booking": booking, "status": "confirmed"})
    p.flow()

    rows = _changes(p, "table_name, action, actor, actor_role, approval_ref, txid")
    assert rows == [
        (n["bookings"], "update", "ann", "dispatcher", None, xid % 2**32),
        (n["bookings"], "update", "bob", "admin", "APR-2", xid % 2**32),
        (n["notes"], "insert", "bob", "admin", "APR-2", xid % 2**32),
        (n["bookings"], "update", "ann", "dispatcher", None, xid % 2**32),
    ]
    price = p.warehouse(
        "SELECT actor, old_value, new_value FROM audit.field_history "
        "WHERE table_name = %s AND action = 'update' AND field = %s",
        (n["bookings"], _price(p)),
    )
    assert price == [("bob", "100.00", "150.00")]


def test_set_local_settings_attribute_without_a_function_call(
    schema_pipeline: Pipeline, booking: Key
) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    with p.source() as conn:
        conn.execute("SET LOCAL bookaudit.actor = 'carl'")
        conn.execute("SET LOCAL bookaudit.role = 'support'")
        conn.execute("SET LOCAL bookaudit.reason = 'goodwill discount'")
        conn.execute("SET LOCAL bookaudit.approval_ref = 'APR-3'")
        conn.execute("SET LOCAL bookaudit.request_id = 'req-3'")
        conn.execute(w.price, {"booking": booking, "price": "90.00"})
        # Changing one setting mid-transaction changes the context of what follows.
        conn.execute("SET LOCAL bookaudit.actor = 'dora'")
        conn.execute(w.status, {"booking": booking, "status": "confirmed"})
    p.flow()

    assert _changes(p, _CONTEXT) == [
        (n["bookings"], "update", "carl", "support", "goodwill discount", "APR-3", "req-3",
         "application"),
        (n["bookings"], "update", "dora", "support", "goodwill discount", "APR-3", "req-3",
         "application"),
    ]  # fmt: skip


def test_bulk_update_records_one_context_and_attributes_every_row(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    booking = p.schema.entity_map.booking
    rows = 10_000
    p.seed(bookings=rows)
    p.start_context_probe()
    with p.source() as conn:
        xid = _xid(conn)
        conn.execute(
            "SELECT bookaudit.set_actor('bulk', role => 'admin', request_id => 'req-bulk')"
        )
        price = sql.Identifier(_price(p))
        updated = conn.execute(
            sql.SQL("UPDATE {} SET {} = {} + 10").format(
                sql.Identifier(booking.table.schema, booking.table.name), price, price
            )
        ).rowcount
    assert updated == rows
    assert p.context_messages(xid) == 1
    p.flow()

    attributed = p.warehouse(
        "SELECT count(*), count(*) FILTER (WHERE actor = 'bulk' AND actor_role = 'admin' "
        "AND request_id = 'req-bulk' AND actor_origin = 'application'), count(DISTINCT txid) "
        "FROM audit.row_changes WHERE table_name = %s AND action = 'update'",
        (booking.table.name,),
    )
    assert attributed == [(rows, rows, 1)]
    prices = p.warehouse(
        "SELECT count(*) FROM audit.field_history WHERE actor = 'bulk' AND field = %s "
        "AND old_value = '100.00' AND new_value = '110.00'",
        (_price(p),),
    )
    assert prices == [(rows,)]


# What the schema's owner deploys: a function the application calls, a trigger of its own, and
# deletes that cascade. The jobs schema keeps a job's notes and invoices when the job goes, so
# its deploy makes those two links cascade as the sample schema's do.
_HELPERS = {
    "sample": """
CREATE FUNCTION reprice(b bigint, p numeric) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bookings SET price = p WHERE id = b;
    INSERT INTO notes (booking_id, author, body) VALUES (b, 'system', 'repriced to ' || p);
END
$$;
CREATE FUNCTION note_assignment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notes (booking_id, author, body)
    VALUES (NEW.booking_id, 'system', 'assigned ' || NEW.fieldworker);
    RETURN NULL;
END
$$;
CREATE TRIGGER note_assignment AFTER INSERT ON assignments
    FOR EACH ROW EXECUTE FUNCTION note_assignment();
""",
    "jobs": """
CREATE FUNCTION reprice(b text, p numeric) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ops.jobs SET quoted_total = p WHERE job_no = b;
    INSERT INTO ops.job_notes (job_ref, body) VALUES (b, 'repriced to ' || p);
END
$$;
CREATE FUNCTION note_assignment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ops.job_notes (job_ref, body) VALUES (NEW.job_no, 'assigned ' || NEW.technician);
    RETURN NULL;
END
$$;
CREATE TRIGGER note_assignment AFTER UPDATE OF technician ON ops.jobs
    FOR EACH ROW EXECUTE FUNCTION note_assignment();
ALTER TABLE ops.job_notes DROP CONSTRAINT job_notes_job_ref_fkey,
    ADD CONSTRAINT job_notes_job_ref_fkey FOREIGN KEY (job_ref) REFERENCES ops.jobs
    ON DELETE CASCADE;
ALTER TABLE billing.invoices DROP CONSTRAINT invoices_job_ref_fkey,
    ADD CONSTRAINT invoices_job_ref_fkey FOREIGN KEY (job_ref) REFERENCES ops.jobs
    ON DELETE CASCADE;
""",
}


def test_function_trigger_and_cascade_changes_carry_the_callers_actor(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    kept, removed = (str(k) for k in p.seed(bookings=2))  # as the warehouse's row keys show
    with p.owner() as conn:
        conn.execute(_HELPERS[p.schema.name])  # the schema's owner deploys these, not the app
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor(%s)", (SEED,))
        conn.execute(
            w.invoice, {"booking": removed, "number": "INV-9", "amount": "100.00", "sent": None}
        )
        conn.execute(w.note, {"booking": removed, "body": "gate code 12"})
    with p.source() as conn:
        xid = _xid(conn)
        conn.execute("SELECT bookaudit.set_actor('erin', role => 'admin', reason => 'cleanup')")
        conn.execute("SELECT reprice(%s, 175.00)", (kept,))
        conn.execute(w.assign, {"booking": kept, "fieldworker": "finn"})
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                sql.Identifier(p.schema.bookings_table.schema, p.schema.bookings_table.name),
                sql.Identifier(p.schema.booking_key),
            ),
            (removed,),
        )
    p.flow()

    rows = p.warehouse(
        "SELECT table_name, action, row_key, actor, actor_role, reason, actor_origin "
        "FROM audit.row_changes WHERE txid = %s",
        (xid % 2**32,),
    )

    def booking_key(table: str, key: str) -> str | None:
        return key if table == n["bookings"] else None

    erin = ("erin", "admin", "cleanup", "application")
    assigned, assigned_action = w.assigned_as
    got = sorted(
        (r[0], r[1], r[2][p.schema.booking_key] if r[0] == n["bookings"] else None, *r[3:])
        for r in rows
    )
    assert got == sorted([
        (n["bookings"], "update", kept, *erin),  # by the function
        (n["notes"], "insert", None, *erin),  # by the function
        (assigned, assigned_action, booking_key(assigned, kept), *erin),
        (n["notes"], "insert", None, *erin),  # by the application's trigger
        (n["bookings"], "delete", removed, *erin),
        (n["invoices"], "delete", None, *erin),  # ON DELETE CASCADE
        (n["notes"], "delete", None, *erin),  # ON DELETE CASCADE
    ])  # fmt: skip
    bodies = p.warehouse(
        "SELECT coalesce(after, before) ->> 'body' FROM audit.row_changes "
        "WHERE txid = %s AND table_name = %s ORDER BY 1",
        (xid % 2**32, n["notes"]),
    )
    assert bodies == [("assigned finn",), ("gate code 12",), ("repriced to 175.00",)]


def test_rolled_back_savepoint_leaves_no_trace_and_the_rest_is_kept(
    schema_pipeline: Pipeline, booking: Key
) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('gil', role => 'dispatcher')")
        conn.execute(w.note, {"booking": booking, "body": "kept before"})
        conn.execute("SAVEPOINT attempt")
        conn.execute("SELECT bookaudit.set_actor('mallory', role => 'intruder')")
        conn.execute(w.price, {"booking": booking, "price": "1.00"})
        conn.execute(w.note, {"booking": booking, "body": "rolled back"})
        conn.execute("ROLLBACK TO SAVEPOINT attempt")
        conn.execute(w.status, {"booking": booking, "status": "scheduled"})
        conn.execute(w.note, {"booking": booking, "body": "kept after"})
    with p.source() as conn:
        # The first context of this transaction is recorded inside the savepoint, so it rolls
        # back with it; the change after the rollback must still be attributed.
        conn.execute("SELECT bookaudit.set_actor('ivy', role => 'billing')")
        conn.execute("SAVEPOINT attempt")
        conn.execute(w.price, {"booking": booking, "price": "2.00"})
        conn.execute("ROLLBACK TO SAVEPOINT attempt")
        conn.execute(w.status, {"booking": booking, "status": "confirmed"})
    p.flow()

    rows = _changes(
        p,
        "table_name, action, actor, actor_role, actor_origin, "
        "coalesce(after ->> 'body', after ->> %s), after ->> %s",
        (_status(p), _price(p)),
    )
    b, notes = n["bookings"], n["notes"]
    assert rows == [
        (notes, "insert", "gil", "dispatcher", "application", "kept before", None),
        (b, "update", "gil", "dispatcher", "application", "scheduled", "100.00"),
        (notes, "insert", "gil", "dispatcher", "application", "kept after", None),
        (b, "update", "ivy", "billing", "application", "confirmed", "100.00"),
    ]
    sequences = p.warehouse(
        "SELECT sequence FROM audit.row_changes WHERE actor = 'gil' ORDER BY sequence"
    )
    assert sequences == [(0,), (1,), (2,)]


def test_pooled_session_never_carries_one_transactions_actor_into_the_next(
    schema_pipeline: Pipeline, booking: Key
) -> None:
    p = schema_pipeline
    w = p.schema.writes
    with p.source(application_name="pool") as conn:
        conn.execute("SELECT bookaudit.set_actor('jo', role => 'billing', request_id => 'r-1')")
        conn.execute(w.price, {"booking": booking, "price": "101.00"})
        conn.commit()
        # The pitfall the design notes: once set in a session, the setting reads '' later on.
        leftover = conn.execute("SELECT current_setting('bookaudit.actor', true)").fetchone()
        assert leftover == ("",)
        conn.execute(w.price, {"booking": booking, "price": "102.00"})
        conn.commit()
        conn.execute("SET LOCAL bookaudit.actor = 'kim'")
        conn.execute(w.price, {"booking": booking, "price": "103.00"})
        conn.commit()
        conn.execute(w.price, {"booking": booking, "price": "104.00"})
        conn.commit()
    p.flow()

    rows = p.warehouse(
        "SELECT after ->> %s, actor, actor_role, request_id, application, actor_origin "
        "FROM audit.row_changes WHERE action = 'update' ORDER BY commit_lsn, sequence",
        (_price(p),),
    )
    assert rows == [
        ("101.00", "jo", "billing", "r-1", "pool", "application"),
        ("102.00", None, None, None, "pool", "db_session"),
        ("103.00", "kim", None, None, "pool", "application"),
        ("104.00", None, None, None, "pool", "db_session"),
    ]


def test_no_context_records_db_role_application_and_client_address(
    schema_pipeline: Pipeline, booking: Key
) -> None:
    p = schema_pipeline
    with p.source(application_name="psql-hotfix") as conn:
        session = conn.execute("SELECT session_user::text, host(inet_client_addr())").fetchone()
        assert session is not None
        conn.execute(p.schema.writes.price, {"booking": booking, "price": "0.01"})
    p.flow()

    rows = p.warehouse(
        "SELECT actor, actor_role, db_user, application, client_addr, actor_origin "
        "FROM audit.row_changes WHERE action = 'update'"
    )
    assert rows == [(None, None, session[0], "psql-hotfix", session[1], "db_session")]
    assert session[1] is not None  # the stack is reached over TCP, so there is an address
    shown = p.warehouse(
        "SELECT actor, old_value, new_value FROM audit.field_history WHERE action = 'update'"
    )
    assert shown == [(f"{session[0]} (db role via psql-hotfix)", "100.00", "0.01")]


def test_interleaved_transactions_each_keep_their_own_actor_in_commit_order(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    b1, b2, b3 = (str(k) for k in p.seed(bookings=3))  # as the warehouse's row keys show
    lea, max_, ned = (p.source(application_name=a) for a in ("lea", "max", "ned"))
    try:
        lea.execute("SELECT bookaudit.set_actor('lea', role => 'dispatcher')")
        max_.execute("SELECT bookaudit.set_actor('max', role => 'admin')")
        ned.execute("SELECT bookaudit.set_actor('ned', role => 'fieldworker')")
        lea.execute(w.status, {"booking": b1, "status": "scheduled"})
        max_.execute(w.price, {"booking": b2, "price": "200.00"})
        ned.execute(w.note, {"booking": b3, "body": "on my way"})
        lea.execute(w.note, {"booking": b1, "body": "slot 9-11"})
        max_.execute(w.status, {"booking": b2, "status": "approved"})
        ned.execute(w.status, {"booking": b3, "status": "in_progress"})
        # lea began first and commits last: the stream must follow commit order.
        max_.commit()
        ned.commit()
        lea.commit()
    finally:
        for conn in (lea, max_, ned):
            conn.close()
    p.flow()

    rows = _changes(
        p,
        "actor, actor_role, application, table_name, action, "
        "coalesce(after, before) ->> %s, row_key ->> %s",
        (p.schema.notes.booking_column, p.schema.booking_key),
    )
    b, notes = n["bookings"], n["notes"]
    assert rows == [
        ("max", "admin", "max", b, "update", None, b2),
        ("max", "admin", "max", b, "update", None, b2),
        ("ned", "fieldworker", "ned", notes, "insert", b3, rows[2][6]),
        ("ned", "fieldworker", "ned", b, "update", None, b3),
        ("lea", "dispatcher", "lea", b, "update", None, b1),
        ("lea", "dispatcher", "lea", notes, "insert", b1, rows[5][6]),
    ]
    txids = p.warehouse(
        "SELECT actor, count(DISTINCT txid) FROM audit.row_changes GROUP BY actor ORDER BY actor"
    )
    assert txids == [("lea", 1), ("max", 1), ("ned", 1), ("seed", 1)]
