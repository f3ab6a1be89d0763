"""Both capture modes on the real stack: commit order, exact text, a drained outbox, same warehouse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devstack import StackEnv
from tests.integration.harness import Pipeline, wait_for
from tests.integration.schemas import SAMPLE, Schema
from tests.integration.workloads import add_customer, book, schema_sql


def test_stream_follows_commit_order_not_transaction_start_order(
    schema_pipeline: Pipeline,
) -> None:
    """Overlapping transactions bump one counter; only commit order gives an unbroken chain."""
    pipeline = schema_pipeline
    [counter] = book(pipeline, price="0.00")
    note = pipeline.schema.writes.note
    bump = schema_sql(
        pipeline.schema, "UPDATE {bookings} SET {price} = {price} + 1 WHERE {key} = %s"
    )
    workers, per_worker = 4, 20
    # The first transaction to take an xid is the last to commit.
    first = pipeline.source(application_name="first")
    first.execute("SELECT bookaudit.set_actor('first')")
    first.execute(note, {"booking": counter, "body": "early"})

    def work(n: int) -> None:
        with pipeline.source(application_name=f"w{n}") as conn:
            for i in range(per_worker):
                conn.execute("SELECT bookaudit.set_actor(%s)", (f"w{n}",))
                conn.execute(note, {"booking": counter, "body": f"tick w{n}"})
                time.sleep((i + n) % 3 / 1000)  # let other transactions start in between
                conn.execute(bump, (counter,))
                conn.commit()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        first.execute(bump, (counter,))
        first.commit()
    finally:
        first.close()
    pipeline.flow()

    total = workers * per_worker + 1
    price = pipeline.schema.names["price"]
    chain = pipeline.warehouse(
        "SELECT before ->> %s, after ->> %s, actor, txid FROM audit.row_changes "
        "WHERE table_name = %s AND action = 'update' ORDER BY commit_lsn, sequence",
        (price, price, pipeline.schema.names["bookings"]),
    )
    assert [(r[0], r[1]) for r in chain] == [(f"{i}.00", f"{i + 1}.00") for i in range(total)]
    assert chain[-1][2] == "first"
    txids = [r[3] for r in chain]
    assert txids[-1] < min(txids[:-1])  # started first, committed last, relayed last


def test_values_keep_their_text_whatever_the_writers_session_settings(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    [booking] = book(p)
    booking_map = p.schema.entity_map.booking
    values = {
        booking_map.fields.schedule[0]: "2026-11-27 09:00+01",
        p.schema.names["updated_at"]: "2026-11-26 08:05:00.123456+00",
        booking_map.fields.price[0]: "149.90",
        # bpchar, on the schema that has such a column
        **({"currency": "USD"} if p.schema is SAMPLE else {}),
    }
    table = schema_sql(p.schema, "{bookings}")
    key = sql.Identifier(p.schema.booking_key)
    columns = [sql.Identifier(c) for c in values]
    with p.source() as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute(
            sql.SQL("UPDATE {} SET ({}) = ROW({}) WHERE {} = %s").format(
                table,
                sql.SQL(", ").join(columns),
                sql.SQL(", ").join(sql.Placeholder() * len(values)),
                key,
            ),
            (*values.values(), booking),
        )
    with p.source() as plain:
        expected = plain.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(c) for c in columns), table, key
            ),
            (booking,),
        ).fetchone()
    p.flow()

    got = p.warehouse(
        f"SELECT {', '.join(['after ->> %s'] * len(values))} FROM audit.row_changes "
        "WHERE action = 'update'",
        list(values),
    )
    assert got == [expected]
    assert expected is not None and expected[2] == "149.90"


@pytest.fixture
def trigger_pipeline(stack: StackEnv) -> Iterator[Pipeline]:
    p = Pipeline(stack, mode="trigger").create()
    yield p
    p.drop()


def _outbox_rows(p: Pipeline) -> int:
    with psycopg.connect(p.source_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM bookaudit.outbox) "
            "+ (SELECT count(*) FROM bookaudit.outbox_commits)"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_outbox_is_drained_while_the_relay_runs(trigger_pipeline: Pipeline) -> None:
    p = trigger_pipeline
    rounds, per_round, per_txn = 3, 4000, 100
    with p.running("capture") as relay:
        for r in range(rounds):
            with p.source() as conn:
                for start in range(0, per_round, per_txn):
                    conn.execute("SELECT bookaudit.set_actor('loader')")
                    conn.execute(
                        "INSERT INTO customers (name) SELECT 'c-' || g "
                        "FROM generate_series(%s::int, %s::int) g",
                        (r * per_round + start, r * per_round + start + per_txn - 1),
                    )
                    conn.commit()
            assert _outbox_rows(p) > 0 or relay.poll() is None
            wait_for(f"the relay to drain round {r}", lambda: _outbox_rows(p) == 0)
            assert relay.poll() is None, "the relay stopped instead of draining while it runs"
    p.consume()
    written = p.warehouse(
        "SELECT count(*), count(DISTINCT after ->> 'name') FROM audit.row_changes "
        "WHERE actor = 'loader'"
    )
    assert written == [(rounds * per_round, rounds * per_round)]


@pytest.fixture
def trigger_any(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    p = Pipeline(stack, mode="trigger", schema=schema).create()
    yield p
    p.drop()


def test_install_refuses_to_mix_modes_and_to_drop_an_undrained_outbox(
    trigger_any: Pipeline,
) -> None:
    p = trigger_any
    table = str(p.schema.bookings_table)
    mixed = p.cli("source", "install", "--mode", "logical", "--table", table, check=False)
    assert mixed.returncode == 2
    assert "audited in trigger mode" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1
    book(p)
    refused = p.cli("source", "uninstall", check=False)
    assert refused.returncode == 2
    assert "still holds 2 changes" in refused.stderr
    p.cli("capture", "--exit-when-idle")
    p.cli("source", "uninstall")
    with psycopg.connect(p.source_dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'bookaudit'), "
            "(SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%%bookaudit%%')"
        ).fetchone()
        add_customer(p, conn, "after uninstall")
    assert left == (0, 0)


# --- the same workload in both modes ----------------------------------------------------------

_T0 = "2026-11-26 08:00:00+00"


def _workload(p: Pipeline) -> None:
    """A day's worth of every attribution path, with no clock-dependent value in any row."""
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        conn.execute(
            "INSERT INTO customers (name, email) VALUES ('Grace', 'grace@example.com'), ('Alan', NULL)"
        )
        conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price, updated_at) "
            "SELECT 1 + g %% 2, 'HVAC', 'Street ' || g, 100 + g + 0.90, %s "
            "FROM generate_series(1, 40) g",
            (_T0,),
        )
        conn.execute(
            "INSERT INTO notes (booking_id, author, body, created_at) VALUES (2, 'dana', 'gate', %s)",
            (_T0,),
        )
        conn.execute(
            "INSERT INTO invoices (booking_id, number, amount) VALUES (2, 'INV-2', 102.90)"
        )
    with p.source() as conn:
        conn.execute("SET LOCAL bookaudit.actor = 'alice'")
        conn.execute("SET LOCAL bookaudit.approval_ref = 'APR-1'")
        conn.execute("UPDATE bookings SET price = price * 1.1 WHERE id <= 20")
        conn.execute("SELECT bookaudit.set_actor('bob', role => 'admin')")
        conn.execute("DELETE FROM bookings WHERE id = 2")  # cascades to notes and invoices
        conn.execute("SAVEPOINT s")
        conn.execute("UPDATE bookings SET status = 'lost' WHERE id = 3")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute(
            "INSERT INTO assignments (booking_id, fieldworker, assigned_at) VALUES (3, 'finn', %s)",
            (_T0,),
        )
    with p.source(application_name="psql") as conn:
        conn.execute("UPDATE bookings SET status = 'cancelled', currency = 'USD' WHERE id = 4")
        conn.execute("UPDATE customers SET email = NULL WHERE id = 1")
    with p.owner() as conn:  # TRUNCATE is for the owner; the application may not
        conn.execute("SELECT bookaudit.set_actor('ops', reason => 'cleanup')")
        conn.execute("TRUNCATE assignments")


def _jobs_workload(p: Pipeline) -> int:
    """The same paths on the jobs schema, which cascades nothing and has no assignments table
    (a technician is a column of the job); returns how many audit rows it makes."""
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        conn.execute(
            "INSERT INTO ops.clients (client_no, full_name, email) "
            "VALUES ('C-1', 'Grace', 'grace@example.com'), ('C-2', 'Alan', NULL)"
        )
        conn.execute(
            "INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total, modified_at) "
            "SELECT 'J-' || lpad(g::text, 3, '0'), 'C-' || (1 + g %% 2), 'HVAC', 100 + g + 0.90, %s "
            "FROM generate_series(1, 40) g",
            (_T0,),
        )
        conn.execute("INSERT INTO ops.job_notes (job_ref, body) VALUES ('J-002', 'gate')")
        conn.execute("INSERT INTO billing.invoices (job_ref, total) VALUES ('J-002', 102.90)")
    with p.source() as conn:
        conn.execute("SET LOCAL bookaudit.actor = 'alice'")
        conn.execute("SET LOCAL bookaudit.approval_ref = 'APR-1'")
        conn.execute(
            "UPDATE ops.jobs SET quoted_total = quoted_total * 1.1 WHERE job_no <= 'J-020'"
        )
        conn.execute("SELECT bookaudit.set_actor('bob', role => 'admin')")
        # Nothing cascades here: the application removes the job's note and invoice first.
        conn.execute("DELETE FROM ops.job_notes WHERE job_ref = 'J-002'")
        conn.execute("DELETE FROM billing.invoices WHERE job_ref = 'J-002'")
        conn.execute("DELETE FROM ops.jobs WHERE job_no = 'J-002'")
        conn.execute("SAVEPOINT s")
        conn.execute("UPDATE ops.jobs SET state = 'lost' WHERE job_no = 'J-003'")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("UPDATE ops.jobs SET technician = 'finn' WHERE job_no = 'J-003'")
        conn.execute("INSERT INTO ops.job_notes (job_ref, body) VALUES ('J-003', 'dog')")
    with p.source(application_name="psql") as conn:
        conn.execute("UPDATE ops.jobs SET state = 'cancelled', title = 'HVAC (void)' "
                     "WHERE job_no = 'J-004'")  # fmt: skip
        conn.execute("UPDATE ops.clients SET email = NULL WHERE client_no = 'C-1'")
    with p.owner() as conn:  # TRUNCATE is for the owner; the application may not
        conn.execute("SELECT bookaudit.set_actor('ops', reason => 'cleanup')")
        conn.execute("TRUNCATE ops.job_notes")
    return 2 + 40 + 1 + 1 + 20 + 3 + 1 + 1 + 2 + 1


def _sample_workload(p: Pipeline) -> int:
    _workload(p)
    return 40 + 2 + 1 + 1 + 20 + 3 + 1 + 2 + 1


WORKLOADS: dict[str, Callable[[Pipeline], int]] = {
    "sample": _sample_workload,
    "jobs": _jobs_workload,
}


_COMPARED = """
SELECT dense_rank() OVER (ORDER BY r.commit_lsn) AS transaction_number, r.sequence,
       r.schema_name, r.table_name, r.action, r.row_key, r.before, r.after,
       r.actor, r.actor_role, r.reason, r.approval_ref, r.request_id, r.application,
       -- Each pipeline has its own application role; the owner is the same in both.
       CASE WHEN r.db_user = %s THEN '<app role>' ELSE r.db_user END, r.client_addr, r.actor_origin, substr(r.kafka_topic, length(%s) + 2),
       -- A keyless event (truncate) goes to whichever partition the producer picks.
       CASE WHEN r.row_key IS NOT NULL THEN r.kafka_partition END,
       CASE WHEN r.row_key IS NOT NULL THEN r.kafka_offset END,
       (SELECT jsonb_agg(jsonb_build_array(f.field, f.position, f.old_value, f.new_value)
                         ORDER BY f.position)
        FROM audit.field_changes f WHERE f.change_id = r.id)
FROM audit.row_changes r ORDER BY r.commit_lsn, r.sequence
"""


def test_same_workload_gives_the_same_warehouse_in_both_modes(
    stack: StackEnv, schema: Schema
) -> None:
    """Everything but the position fields (commit_lsn/lsn: WAL position or commit_seq; txid:
    each database numbers its own transactions), the clocks (committed_at, recorded_at), the
    per-test topic prefix and capture_mode itself must be identical, down to the Kafka
    partition and offset of every keyed event."""
    contents: dict[str, list[tuple[Any, ...]]] = {}
    made: dict[str, int] = {}
    for mode in ("logical", "trigger"):
        p = Pipeline(stack, mode=mode, schema=schema).create()
        try:
            made[mode] = WORKLOADS[schema.name](p)
            p.flow()
            contents[mode] = p.warehouse(_COMPARED, (p.app_role, p.prefix))
            modes = p.warehouse("SELECT DISTINCT capture_mode FROM audit.row_changes")
            assert modes == [(mode,)]
            one_txid = p.warehouse(
                "SELECT count(DISTINCT txid) FROM audit.row_changes GROUP BY commit_lsn "
                "HAVING count(DISTINCT txid) <> 1"
            )
            assert one_txid == []
        finally:
            p.drop()
    logical, trigger = contents["logical"], contents["trigger"]
    assert len(logical) == made["logical"]
    for i, (a, b) in enumerate(zip(logical, trigger, strict=True)):
        assert a == b, f"row {i} differs:\nlogical {a}\ntrigger {b}"
