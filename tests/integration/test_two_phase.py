"""A prepared transaction (PREPARE TRANSACTION, then COMMIT PREPARED) carries its signed context.

The shared stack allows no prepared transactions, so this runs on a private server: the
application role writes, and the context messages decoded from the slot must pass the capture's
own check for that transaction, one per context, in statement order.
"""

from __future__ import annotations

import re

import psycopg

from bookaudit.cdc.transactions import verified_context
from bookaudit.demo.day import create_app_role
from bookaudit.source.install import TableName, apply, plan_install
from tests.integration.harness import private_server

_MESSAGE = re.compile(r"message: transactional: 1 prefix: bookaudit\.context, sz: \d+ content:(.*)")


def test_a_prepared_transaction_carries_its_signed_context() -> None:
    settings = {"wal_level": "logical", "max_prepared_transactions": "2"}
    with private_server(settings) as dsn:
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("CREATE TABLE public.shift_notes (id int PRIMARY KEY, note text)")
            owner.execute("INSERT INTO public.shift_notes VALUES (1, 'a'), (2, 'b')")
            app = create_app_role(dsn, "two_phase_app")
            tables = [TableName.parse("public.shift_notes")]
            apply(owner, plan_install(owner, tables, "bookaudit", grant_to=["two_phase_app"]))
            owner.execute("SELECT pg_create_logical_replication_slot('two_phase', 'test_decoding')")
            row = owner.execute("SELECT key FROM bookaudit.context_key").fetchone()
            assert row is not None
            key = bytes(row[0])
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT bookaudit.set_actor('pia', role => 'nurse')")
            conn.execute("UPDATE public.shift_notes SET note = 'c' WHERE id = 1")
            conn.execute("UPDATE public.shift_notes SET note = 'd' WHERE id = 2")
            conn.execute("SELECT bookaudit.set_actor('quin')")
            conn.execute("UPDATE public.shift_notes SET note = 'e' WHERE id = 1")
            conn.execute("PREPARE TRANSACTION 'shift'")
            conn.execute("COMMIT PREPARED 'shift'")
        with psycopg.connect(dsn, autocommit=True) as owner:
            lines = [
                str(r[0])
                for r in owner.execute(
                    "SELECT data FROM pg_logical_slot_get_changes('two_phase', NULL, NULL)"
                )
            ]
            owner.execute("SELECT pg_drop_replication_slot('two_phase')")

    begins = [int(line.split()[1]) for line in lines if line.startswith("BEGIN")]
    assert len(begins) == 1, lines
    messages = [m.group(1).encode() for line in lines if (m := _MESSAGE.fullmatch(line))]
    contexts = [verified_context(key, begins[0], content) for content in messages]
    assert [(c.id, c.role, c.db_user) if c else None for c in contexts] == [
        ("pia", "nurse", "two_phase_app"),
        ("quin", None, "two_phase_app"),
    ]
    # The same messages are refused for any other transaction.
    assert [verified_context(key, begins[0] + 1, content) for content in messages] == [None, None]
