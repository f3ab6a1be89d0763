"""The application role may name its user, never forge or suppress what the database knows.

Each test replays a forgery as the non-owner application role, in both capture modes, on the
sample schema and on one that shares none of its names, and reads the attribution the
warehouse ends up with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.integration.harness import Pipeline

Conn = psycopg.Connection[tuple[Any, ...]]

FORGED_CONTEXT = json.dumps(
    {
        "actor": "boss",
        "role": "admin",
        "approval_ref": "APR-FAKE",
        "application": "trusted-batch",
        "db_user": "postgres",
        "client_addr": "10.9.9.9",
        "origin": "application",
    }
)


def _attribution(p: Pipeline) -> list[tuple[Any, ...]]:
    """Each booking update's new price, with the attribution the warehouse stored for it."""
    booking = p.schema.entity_map.booking
    return p.warehouse(
        "SELECT after ->> %s, actor, actor_role, approval_ref, application, db_user, "
        "client_addr, actor_origin FROM audit.row_changes "
        "WHERE table_name = %s AND action = 'update' ORDER BY commit_lsn, sequence",
        (booking.fields.price[0], booking.table.name),
    )


def _client_addr(conn: Conn) -> str:
    row = conn.execute("SELECT host(inet_client_addr())").fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def _mark(application: str, *settings: str) -> str:
    """What the source compares to decide the context was already recorded: the five
    settings and application_name, joined as bookaudit._context_mark() joins them."""
    values = list(settings) + [""] * (5 - len(settings))
    return "\x1f".join([*values, application])


def test_an_emitted_context_message_cannot_forge_the_database_facts(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    price = p.schema.writes.price
    [booking] = p.seed()
    with p.source(application_name="web") as conn:
        addr = _client_addr(conn)
        # Before the real context, and again after it: neither may be believed.
        conn.execute(
            "SELECT pg_logical_emit_message(true, 'bookaudit.context', %s)", (FORGED_CONTEXT,)
        )
        conn.execute("SELECT bookaudit.set_actor('ann', role => 'dispatcher')")
        conn.execute(price, {"booking": booking, "price": "101.00"})
        conn.execute(
            "SELECT pg_logical_emit_message(true, 'bookaudit.context', %s)", (FORGED_CONTEXT,)
        )
        conn.execute(price, {"booking": booking, "price": "102.00"})
    with p.source(application_name="web") as conn:
        # Alone, with no actor named: the database still knows who the session is.
        conn.execute(
            "SELECT pg_logical_emit_message(true, 'bookaudit.context', %s)", (FORGED_CONTEXT,)
        )
        conn.execute(price, {"booking": booking, "price": "103.00"})
    p.flow()
    p.alerts()

    # Logical mode sees the forged message in the stream: the changes keep the genuine context
    # and are flagged. Trigger mode never reads messages: nothing there to flag.
    flagged = "forged" if p.mode == "logical" else None
    app = p.app_role
    assert _attribution(p) == [
        ("101.00", "ann", "dispatcher", None, "web", app, addr, flagged or "application"),
        ("102.00", "ann", "dispatcher", None, "web", app, addr, flagged or "application"),
        ("103.00", None, None, None, "web", app, addr, flagged or "db_session"),
    ]
    untrusted = p.warehouse(
        "SELECT count(*) FROM audit.alerts WHERE rule = 'untrusted-attribution'"
    )
    assert untrusted == [(3 if flagged else 0,)]


def test_a_preset_emitted_marker_cannot_suppress_the_context(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    price = p.schema.writes.price
    [booking] = p.seed()
    with p.source(application_name="web") as conn:
        addr = _client_addr(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT bookaudit._context_mark()")
    with p.source(application_name="web") as conn:
        # The marker as earlier versions kept it (the bare mark), and in today's form with a
        # made-up signature: neither keeps the context from being recorded.
        conn.execute("SELECT set_config('bookaudit._emitted', %s, true)", (_mark("web"),))
        conn.execute(price, {"booking": booking, "price": "111.00"})
    with p.source(application_name="web") as conn:
        conn.execute("SELECT bookaudit.set_actor('bea')")
        conn.execute(
            "SELECT set_config('bookaudit._emitted', %s, true)",
            ("0" * 64 + " " + _mark("web", "bea"),),
        )
        conn.execute(price, {"booking": booking, "price": "112.00"})
    with p.source(application_name="web") as conn:
        # A marker that was genuine, in an earlier transaction, is no good in this one.
        conn.execute("SELECT bookaudit.set_actor('bea')")
        conn.execute(price, {"booking": booking, "price": "113.00"})
        genuine = conn.execute("SELECT current_setting('bookaudit._emitted', true)").fetchone()
    assert genuine is not None
    with p.source(application_name="web") as conn:
        conn.execute("SELECT bookaudit.set_actor('bea')")
        conn.execute("SELECT set_config('bookaudit._emitted', %s, true)", (genuine[0] or "",))
        conn.execute(price, {"booking": booking, "price": "114.00"})
    p.flow()

    app = p.app_role
    assert _attribution(p) == [
        ("111.00", None, None, None, "web", app, addr, "db_session"),
        ("112.00", "bea", None, None, "web", app, addr, "application"),
        ("113.00", "bea", None, None, "web", app, addr, "application"),
        ("114.00", "bea", None, None, "web", app, addr, "application"),
    ]


def test_preset_trigger_mode_settings_change_nothing(schema_pipeline: Pipeline) -> None:
    """Every setting trigger mode ever kept its state or a cache in, preset at once."""
    p = schema_pipeline
    price = p.schema.writes.price
    [booking] = p.seed()
    with p.source(application_name="web") as conn:
        addr = _client_addr(conn)
        relid = conn.execute(
            "SELECT %s::regclass::oid", (str(p.schema.entity_map.booking.table),)
        ).fetchone()
        assert relid is not None
        for name, value in (
            # A shape id the relay would read the row through instead of the table's own.
            (f"bookaudit._shape_{relid[0]}", "1"),
            ("bookaudit._context", FORGED_CONTEXT),
            ("bookaudit._emitted", _mark("web")),
            ("bookaudit._context_seq", "0"),
            ("bookaudit._seq", "7"),
            ("bookaudit._commit_registered", "yes"),
        ):
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        conn.execute(price, {"booking": booking, "price": "121.00"})
        conn.execute("SELECT bookaudit.set_actor('cy', role => 'billing')")
        conn.execute("SELECT set_config('bookaudit._emitted', %s, true)", (_mark("web", "cy"),))
        conn.execute(price, {"booking": booking, "price": "122.00"})
    p.flow()

    app = p.app_role
    assert _attribution(p) == [
        ("121.00", None, None, None, "web", app, addr, "db_session"),
        ("122.00", "cy", "billing", None, "web", app, addr, "application"),
    ]
    sequences = p.warehouse(
        "SELECT sequence FROM audit.row_changes WHERE action = 'update' ORDER BY sequence"
    )
    assert sequences == [(0,), (1,)]


def test_the_application_role_reaches_no_bookaudit_state(schema_pipeline: Pipeline) -> None:
    """No write to the outbox, no read of the key, no call of the signing function: the
    grants follow the audited tables' schemas, so both schemas are tried."""
    p = schema_pipeline
    table = p.schema.entity_map.booking.table
    outbox = (
        "INSERT INTO bookaudit.outbox (txid, seq, context_seq, schema_name, table_name, op, "
        "context) VALUES (1, 0, 0, %s, %s, 'u', %s::jsonb)"
    )
    attempts: list[tuple[str, tuple[Any, ...]]] = [
        ("SELECT key FROM bookaudit.context_key", ()),
        ("SELECT bookaudit._mac('x'::bytea)", ()),
        ("SELECT bookaudit.current_context()", ()),
        ("SELECT bookaudit.emit_context()", ()),
    ]
    if p.mode == "trigger":
        attempts += [
            (outbox, (table.schema, table.name, FORGED_CONTEXT)),
            ("SELECT count(*) FROM bookaudit.outbox", ()),
            ("DELETE FROM bookaudit.outbox_commits", ()),
            ("SELECT nextval('bookaudit.commit_seq')", ()),
            ("SELECT bookaudit.outbox_row()", ()),
        ]
    for query, params in attempts:
        with (
            p.source() as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
        ):
            conn.execute(query, params)


def test_a_marker_replayed_from_a_rolled_back_savepoint_is_flagged(
    schema_pipeline: Pipeline,
) -> None:
    """The one replay a session can still try: the genuine marker of its own transaction, kept
    from a savepoint whose context rolled back. Trigger mode keeps its state in the outbox, which
    rolls back too; logical mode cannot tell the marker from a live one, so the change arrives
    with no context at all, and is stored and alerted as such, never as someone else's."""
    p = schema_pipeline
    w = p.schema.writes
    [booking] = p.seed()
    with p.source(application_name="web") as conn:
        addr = _client_addr(conn)
        conn.execute("SAVEPOINT s")
        conn.execute(w.status, {"booking": booking, "status": "x"})
        marker = conn.execute("SELECT current_setting('bookaudit._emitted', true)").fetchone()
        conn.execute("ROLLBACK TO SAVEPOINT s")
        assert marker is not None
        if p.mode == "logical":
            assert marker[0], "logical mode keeps its signed marker in the setting"
        replay = marker[0] or _mark("web")  # trigger mode keeps no marker: try the bare mark
        conn.execute("SELECT set_config('bookaudit._emitted', %s, true)", (replay,))
        conn.execute(w.price, {"booking": booking, "price": "131.00"})
    p.flow()
    p.alerts()

    rows = _attribution(p)
    if p.mode == "trigger":
        app = p.app_role
        assert rows == [("131.00", None, None, None, "web", app, addr, "db_session")]
    else:
        assert rows == [("131.00", None, None, None, None, None, None, "missing")]
        alerts = p.warehouse(
            "SELECT rule, severity FROM audit.alerts WHERE rule = 'untrusted-attribution'"
        )
        assert alerts == [("untrusted-attribution", "critical")]


def test_a_marker_signed_for_anything_else_does_not_suppress_the_context(
    schema_pipeline: Pipeline,
) -> None:
    """The marker is the HMAC over 'emitted:<xid>:<mark>' and nothing else. Signed here with the
    real key (which the application cannot read), every near miss still leaves the context to be
    recorded: the earlier '<hmac> <mark>' form, the context message's prefix, another
    transaction's id. The exact marker, the control, does suppress it in logical mode (trigger
    mode keeps its state in the outbox and ignores the setting)."""
    p = schema_pipeline
    price = p.schema.writes.price
    [booking] = p.seed()
    with p.owner() as owner:
        row = owner.execute("SELECT key FROM bookaudit.context_key").fetchone()
    assert row is not None
    key = bytes(row[0])

    def signed(prefix: str, xid: int, mark: str) -> str:
        message = f"{prefix}:{xid}:{mark}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    mark = _mark("web", "dee")
    variants: tuple[tuple[str, Callable[[int], str]], ...] = (
        ("141.00", lambda xid: signed("emitted", xid, mark) + " " + mark),
        ("142.00", lambda xid: signed("context", xid, mark)),
        ("143.00", lambda xid: signed("emitted", (xid + 1) % 2**32, mark)),
        ("144.00", lambda xid: signed("emitted", xid, mark)),
    )
    with p.source(application_name="web") as conn:
        addr = _client_addr(conn)
    for new_price, marker in variants:
        with p.source(application_name="web") as conn:
            conn.execute("SELECT bookaudit.set_actor('dee')")
            xid = conn.execute("SELECT pg_current_xact_id()::text::bigint % 4294967296").fetchone()
            assert xid is not None
            conn.execute(
                "SELECT set_config('bookaudit._emitted', %s, true)", (marker(int(xid[0])),)
            )
            conn.execute(price, {"booking": booking, "price": new_price})
    p.flow()

    app = p.app_role
    recorded = ("dee", None, None, "web", app, addr, "application")
    control = recorded if p.mode == "trigger" else (None, None, None, None, None, None, "missing")
    assert _attribution(p) == [
        ("141.00", *recorded),
        ("142.00", *recorded),
        ("143.00", *recorded),
        ("144.00", *control),
    ]
