"""Both capture modes on the real stack: commit order, exact text, a drained outbox, same warehouse."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devstack import StackEnv
from tests.integration.harness import Pipeline, wait_for


def test_stream_follows_commit_order_not_transaction_start_order(pipeline: Pipeline) -> None:
    """Overlapping transactions bump one counter; only commit order gives an unbroken chain."""
    [counter] = pipeline.seed(price="0.00")
    workers, per_worker = 4, 20
    # The first transaction to take an xid is the last to commit.
    first = pipeline.source(application_name="first")
    first.execute("SELECT bookaudit.set_actor('first')")
    first.execute(
        "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'first', 'early')", (counter,)
    )

    def work(n: int) -> None:
        with pipeline.source(application_name=f"w{n}") as conn:
            for i in range(per_worker):
                conn.execute("SELECT bookaudit.set_actor(%s)", (f"w{n}",))
                conn.execute(
                    "INSERT INTO notes (booking_id, author, body) VALUES (%s, %s, 'tick')",
                    (counter, f"w{n}"),
                )
                time.sleep((i + n) % 3 / 1000)  # let other transactions start in between
                conn.execute("UPDATE bookings SET price = price + 1 WHERE id = %s", (counter,))
                conn.commit()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        first.execute("UPDATE bookings SET price = price + 1 WHERE id = %s", (counter,))
        first.commit()
    finally:
        first.close()
    pipeline.flow()

    total = workers * per_worker + 1
    chain = pipeline.warehouse(
        "SELECT before ->> 'price', after ->> 'price', actor, txid FROM audit.row_changes "
        "WHERE table_name = 'bookings' AND action = 'update' ORDER BY commit_lsn, sequence"
    )
    assert [(r[0], r[1]) for r in chain] == [(f"{i}.00", f"{i + 1}.00") for i in range(total)]
    assert chain[-1][2] == "first"
    txids = [r[3] for r in chain]
    assert txids[-1] < min(txids[:-1])  # started first, committed last, relayed last


def test_values_keep_their_text_whatever_the_writers_session_settings(
    pipeline: Pipeline,
) -> None:
    [booking] = pipeline.seed()
    with pipeline.source() as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute(
            "UPDATE bookings SET scheduled_start = '2026-11-27 09:00+01', "
            "updated_at = '2026-11-26 08:05:00.123456+00', price = 149.90, currency = 'USD' "
            "WHERE id = %s",
            (booking,),
        )
    with pipeline.source() as plain:
        expected = plain.execute(
            "SELECT scheduled_start::text, updated_at::text, price::text, currency::text "
            "FROM bookings WHERE id = %s",
            (booking,),
        ).fetchone()
    pipeline.flow()

    got = pipeline.warehouse(
        "SELECT after ->> 'scheduled_start', after ->> 'updated_at', after ->> 'price', "
        "after ->> 'currency' FROM audit.row_changes WHERE action = 'update'"
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
    relay = p.spawn("capture")
    try:
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
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    p.consume()
    written = p.warehouse(
        "SELECT count(*), count(DISTINCT after ->> 'name') FROM audit.row_changes "
        "WHERE actor = 'loader'"
    )
    assert written == [(rounds * per_round, rounds * per_round)]


def test_install_refuses_to_mix_modes_and_to_drop_an_undrained_outbox(
    trigger_pipeline: Pipeline,
) -> None:
    p = trigger_pipeline
    mixed = p.cli("source", "install", "--mode", "logical", "--table", "bookings", check=False)
    assert mixed.returncode == 2
    assert "audited in trigger mode" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1
    p.seed()
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
        conn.execute("INSERT INTO customers (name) VALUES ('after uninstall')")
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


def test_same_workload_gives_the_same_warehouse_in_both_modes(stack: StackEnv) -> None:
    """Everything but the position fields (commit_lsn/lsn: WAL position or commit_seq; txid:
    each database numbers its own transactions), the clocks (committed_at, recorded_at), the
    per-test topic prefix and capture_mode itself must be identical, down to the Kafka
    partition and offset of every keyed event."""
    contents: dict[str, list[tuple[Any, ...]]] = {}
    for mode in ("logical", "trigger"):
        p = Pipeline(stack, mode=mode).create()
        try:
            _workload(p)
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
    assert len(logical) == 40 + 2 + 1 + 1 + 20 + 3 + 1 + 2 + 1
    for i, (a, b) in enumerate(zip(logical, trigger, strict=True)):
        assert a == b, f"row {i} differs:\nlogical {a}\ntrigger {b}"
