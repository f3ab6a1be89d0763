"""Who changed it: every way a row can change carries the right actor, on the real stack."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.integration.harness import Pipeline

Conn = psycopg.Connection[tuple[Any, ...]]
SEED = "seed"

_ROWS = (
    "SELECT table_name, action, actor, actor_role, reason, approval_ref, request_id, "
    "actor_origin FROM audit.row_changes WHERE actor IS DISTINCT FROM 'seed' "
    "ORDER BY commit_lsn, sequence"
)


def _xid(conn: Conn) -> int:
    """The running transaction's full (epoch-qualified) id."""
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def test_set_actor_once_covers_every_statement_of_the_transaction(pipeline: Pipeline) -> None:
    [booking] = pipeline.seed()
    with pipeline.source() as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('ann', role => 'dispatcher', reason => 'customer call', "
            "approval_ref => 'APR-1', request_id => 'req-1')"
        )
        conn.execute("UPDATE bookings SET status = 'scheduled' WHERE id = %s", (booking,))
        conn.execute(
            "UPDATE bookings SET scheduled_start = '2026-12-01 09:00+00' WHERE id = %s", (booking,)
        )
        conn.execute(
            "INSERT INTO assignments (booking_id, fieldworker) VALUES (%s, 'finn')", (booking,)
        )
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'ann', 'called')", (booking,)
        )
        conn.execute("UPDATE bookings SET price = 120.00 WHERE id = %s", (booking,))
    pipeline.flow()

    context = ("ann", "dispatcher", "customer call", "APR-1", "req-1", "application")
    assert pipeline.warehouse(_ROWS) == [
        ("bookings", "update", *context),
        ("bookings", "update", *context),
        ("assignments", "insert", *context),
        ("notes", "insert", *context),
        ("bookings", "update", *context),
    ]


def test_set_actor_twice_in_one_transaction_attributes_each_change_to_its_context(
    pipeline: Pipeline,
) -> None:
    [booking] = pipeline.seed()
    with pipeline.source() as conn:
        xid = _xid(conn)
        conn.execute("SELECT bookaudit.set_actor('ann', role => 'dispatcher')")
        conn.execute("UPDATE bookings SET status = 'scheduled' WHERE id = %s", (booking,))
        conn.execute("SELECT bookaudit.set_actor('bob', role => 'admin', approval_ref => 'APR-2')")
        conn.execute("UPDATE bookings SET price = 150.00 WHERE id = %s", (booking,))
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'bob', 'approved')",
            (booking,),
        )
        # Back to the first context: it must be announced again, not assumed.
        conn.execute("SELECT bookaudit.set_actor('ann', role => 'dispatcher')")
        conn.execute("UPDATE bookings SET status = 'confirmed' WHERE id = %s", (booking,))
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT table_name, action, actor, actor_role, approval_ref, txid FROM audit.row_changes "
        "WHERE actor IS DISTINCT FROM 'seed' ORDER BY commit_lsn, sequence"
    )
    assert rows == [
        ("bookings", "update", "ann", "dispatcher", None, xid % 2**32),
        ("bookings", "update", "bob", "admin", "APR-2", xid % 2**32),
        ("notes", "insert", "bob", "admin", "APR-2", xid % 2**32),
        ("bookings", "update", "ann", "dispatcher", None, xid % 2**32),
    ]
    price = pipeline.warehouse(
        "SELECT actor, old_value, new_value FROM audit.field_history "
        "WHERE table_name = 'bookings' AND action = 'update' AND field = 'price'"
    )
    assert price == [("bob", "100.00", "150.00")]


def test_set_local_settings_attribute_without_a_function_call(pipeline: Pipeline) -> None:
    [booking] = pipeline.seed()
    with pipeline.source() as conn:
        conn.execute("SET LOCAL bookaudit.actor = 'carl'")
        conn.execute("SET LOCAL bookaudit.role = 'support'")
        conn.execute("SET LOCAL bookaudit.reason = 'goodwill discount'")
        conn.execute("SET LOCAL bookaudit.approval_ref = 'APR-3'")
        conn.execute("SET LOCAL bookaudit.request_id = 'req-3'")
        conn.execute("UPDATE bookings SET price = 90.00 WHERE id = %s", (booking,))
        # Changing one setting mid-transaction changes the context of what follows.
        conn.execute("SET LOCAL bookaudit.actor = 'dora'")
        conn.execute("UPDATE bookings SET status = 'confirmed' WHERE id = %s", (booking,))
    pipeline.flow()

    assert pipeline.warehouse(_ROWS) == [
        ("bookings", "update", "carl", "support", "goodwill discount", "APR-3", "req-3",
         "application"),
        ("bookings", "update", "dora", "support", "goodwill discount", "APR-3", "req-3",
         "application"),
    ]  # fmt: skip


def test_bulk_update_records_one_context_and_attributes_every_row(pipeline: Pipeline) -> None:
    rows = 10_000
    pipeline.seed(bookings=rows)
    pipeline.start_context_probe()
    with pipeline.source() as conn:
        xid = _xid(conn)
        conn.execute(
            "SELECT bookaudit.set_actor('bulk', role => 'admin', request_id => 'req-bulk')"
        )
        updated = conn.execute("UPDATE bookings SET price = price + 10").rowcount
    assert updated == rows
    assert pipeline.context_messages(xid) == 1
    pipeline.flow()

    attributed = pipeline.warehouse(
        "SELECT count(*), count(*) FILTER (WHERE actor = 'bulk' AND actor_role = 'admin' "
        "AND request_id = 'req-bulk' AND actor_origin = 'application'), count(DISTINCT txid) "
        "FROM audit.row_changes WHERE table_name = 'bookings' AND action = 'update'"
    )
    assert attributed == [(rows, rows, 1)]
    prices = pipeline.warehouse(
        "SELECT count(*) FROM audit.field_history WHERE actor = 'bulk' AND field = 'price' "
        "AND old_value = '100.00' AND new_value = '110.00'"
    )
    assert prices == [(rows,)]


_HELPERS = """
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
"""


def test_function_trigger_and_cascade_changes_carry_the_callers_actor(
    pipeline: Pipeline,
) -> None:
    kept, removed = pipeline.seed(bookings=2)
    with pipeline.owner() as conn:
        conn.execute(_HELPERS)  # the schema's owner makes functions and triggers, not the app
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor(%s)", (SEED,))
        conn.execute(
            "INSERT INTO invoices (booking_id, number, amount) VALUES (%s, 'INV-9', 100.00)",
            (removed,),
        )
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'ann', 'gate code 12')",
            (removed,),
        )
    with pipeline.source() as conn:
        xid = _xid(conn)
        conn.execute("SELECT bookaudit.set_actor('erin', role => 'admin', reason => 'cleanup')")
        conn.execute("SELECT reprice(%s, 175.00)", (kept,))
        conn.execute(
            "INSERT INTO assignments (booking_id, fieldworker) VALUES (%s, 'finn')", (kept,)
        )
        conn.execute("DELETE FROM bookings WHERE id = %s", (removed,))
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT table_name, action, row_key, actor, actor_role, reason, actor_origin "
        "FROM audit.row_changes WHERE txid = %s",
        (xid % 2**32,),
    )
    erin = ("erin", "admin", "cleanup", "application")
    assert sorted((r[0], r[1], r[2]["id"] if r[0] == "bookings" else None, *r[3:]) for r in rows) == sorted([
        ("bookings", "update", str(kept), *erin),  # by the function
        ("notes", "insert", None, *erin),  # by the function
        ("assignments", "insert", None, *erin),
        ("notes", "insert", None, *erin),  # by the application's trigger
        ("bookings", "delete", str(removed), *erin),
        ("invoices", "delete", None, *erin),  # ON DELETE CASCADE
        ("notes", "delete", None, *erin),  # ON DELETE CASCADE
    ])  # fmt: skip
    bodies = pipeline.warehouse(
        "SELECT coalesce(after, before) ->> 'body' FROM audit.row_changes "
        "WHERE txid = %s AND table_name = 'notes' ORDER BY 1",
        (xid % 2**32,),
    )
    assert bodies == [("assigned finn",), ("gate code 12",), ("repriced to 175.00",)]


def test_rolled_back_savepoint_leaves_no_trace_and_the_rest_is_kept(pipeline: Pipeline) -> None:
    [booking] = pipeline.seed()
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('gil', role => 'dispatcher')")
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'gil', 'kept before')",
            (booking,),
        )
        conn.execute("SAVEPOINT attempt")
        conn.execute("SELECT bookaudit.set_actor('mallory', role => 'intruder')")
        conn.execute("UPDATE bookings SET price = 1.00 WHERE id = %s", (booking,))
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'mallory', 'rolled back')",
            (booking,),
        )
        conn.execute("ROLLBACK TO SAVEPOINT attempt")
        conn.execute("UPDATE bookings SET status = 'scheduled' WHERE id = %s", (booking,))
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'gil', 'kept after')",
            (booking,),
        )
    with pipeline.source() as conn:
        # The first context of this transaction is recorded inside the savepoint, so it rolls
        # back with it; the change after the rollback must still be attributed.
        conn.execute("SELECT bookaudit.set_actor('ivy', role => 'billing')")
        conn.execute("SAVEPOINT attempt")
        conn.execute("UPDATE bookings SET price = 2.00 WHERE id = %s", (booking,))
        conn.execute("ROLLBACK TO SAVEPOINT attempt")
        conn.execute("UPDATE bookings SET status = 'confirmed' WHERE id = %s", (booking,))
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT table_name, action, actor, actor_role, actor_origin, "
        "coalesce(after ->> 'body', after ->> 'status'), after ->> 'price' "
        "FROM audit.row_changes WHERE actor IS DISTINCT FROM 'seed' ORDER BY commit_lsn, sequence"
    )
    assert rows == [
        ("notes", "insert", "gil", "dispatcher", "application", "kept before", None),
        ("bookings", "update", "gil", "dispatcher", "application", "scheduled", "100.00"),
        ("notes", "insert", "gil", "dispatcher", "application", "kept after", None),
        ("bookings", "update", "ivy", "billing", "application", "confirmed", "100.00"),
    ]
    sequences = pipeline.warehouse(
        "SELECT sequence FROM audit.row_changes WHERE actor = 'gil' ORDER BY sequence"
    )
    assert sequences == [(0,), (1,), (2,)]


def test_pooled_session_never_carries_one_transactions_actor_into_the_next(
    pipeline: Pipeline,
) -> None:
    [booking] = pipeline.seed()
    with pipeline.source(application_name="pool") as conn:
        conn.execute("SELECT bookaudit.set_actor('jo', role => 'billing', request_id => 'r-1')")
        conn.execute("UPDATE bookings SET price = 101.00 WHERE id = %s", (booking,))
        conn.commit()
        # The pitfall the design notes: once set in a session, the setting reads '' later on.
        leftover = conn.execute("SELECT current_setting('bookaudit.actor', true)").fetchone()
        assert leftover == ("",)
        conn.execute("UPDATE bookings SET price = 102.00 WHERE id = %s", (booking,))
        conn.commit()
        conn.execute("SET LOCAL bookaudit.actor = 'kim'")
        conn.execute("UPDATE bookings SET price = 103.00 WHERE id = %s", (booking,))
        conn.commit()
        conn.execute("UPDATE bookings SET price = 104.00 WHERE id = %s", (booking,))
        conn.commit()
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT after ->> 'price', actor, actor_role, request_id, application, actor_origin "
        "FROM audit.row_changes WHERE action = 'update' ORDER BY commit_lsn, sequence"
    )
    assert rows == [
        ("101.00", "jo", "billing", "r-1", "pool", "application"),
        ("102.00", None, None, None, "pool", "db_session"),
        ("103.00", "kim", None, None, "pool", "application"),
        ("104.00", None, None, None, "pool", "db_session"),
    ]


def test_no_context_records_db_role_application_and_client_address(pipeline: Pipeline) -> None:
    [booking] = pipeline.seed()
    with pipeline.source(application_name="psql-hotfix") as conn:
        session = conn.execute("SELECT session_user::text, host(inet_client_addr())").fetchone()
        assert session is not None
        conn.execute("UPDATE bookings SET price = 0.01 WHERE id = %s", (booking,))
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT actor, actor_role, db_user, application, client_addr, actor_origin "
        "FROM audit.row_changes WHERE action = 'update'"
    )
    assert rows == [(None, None, session[0], "psql-hotfix", session[1], "db_session")]
    assert session[1] is not None  # the stack is reached over TCP, so there is an address
    shown = pipeline.warehouse(
        "SELECT actor, old_value, new_value FROM audit.field_history WHERE action = 'update'"
    )
    assert shown == [(f"{session[0]} (db role via psql-hotfix)", "100.00", "0.01")]


def test_interleaved_transactions_each_keep_their_own_actor_in_commit_order(
    pipeline: Pipeline,
) -> None:
    b1, b2, b3 = pipeline.seed(bookings=3)
    lea, max_, ned = (pipeline.source(application_name=n) for n in ("lea", "max", "ned"))
    try:
        lea.execute("SELECT bookaudit.set_actor('lea', role => 'dispatcher')")
        max_.execute("SELECT bookaudit.set_actor('max', role => 'admin')")
        ned.execute("SELECT bookaudit.set_actor('ned', role => 'fieldworker')")
        lea.execute("UPDATE bookings SET status = 'scheduled' WHERE id = %s", (b1,))
        max_.execute("UPDATE bookings SET price = 200.00 WHERE id = %s", (b2,))
        ned.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'ned', 'on my way')", (b3,)
        )
        lea.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'lea', 'slot 9-11')", (b1,)
        )
        max_.execute("UPDATE bookings SET status = 'approved' WHERE id = %s", (b2,))
        ned.execute("UPDATE bookings SET status = 'in_progress' WHERE id = %s", (b3,))
        # lea began first and commits last: the stream must follow commit order.
        max_.commit()
        ned.commit()
        lea.commit()
    finally:
        for conn in (lea, max_, ned):
            conn.close()
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT actor, actor_role, application, table_name, action, "
        "coalesce(after, before) ->> 'booking_id', row_key ->> 'id' "
        "FROM audit.row_changes WHERE actor IS DISTINCT FROM 'seed' ORDER BY commit_lsn, sequence"
    )
    assert rows == [
        ("max", "admin", "max", "bookings", "update", None, str(b2)),
        ("max", "admin", "max", "bookings", "update", None, str(b2)),
        ("ned", "fieldworker", "ned", "notes", "insert", str(b3), rows[2][6]),
        ("ned", "fieldworker", "ned", "bookings", "update", None, str(b3)),
        ("lea", "dispatcher", "lea", "bookings", "update", None, str(b1)),
        ("lea", "dispatcher", "lea", "notes", "insert", str(b1), rows[5][6]),
    ]
    txids = pipeline.warehouse(
        "SELECT actor, count(DISTINCT txid) FROM audit.row_changes GROUP BY actor ORDER BY actor"
    )
    assert txids == [("lea", 1), ("max", 1), ("ned", 1), ("seed", 1)]
