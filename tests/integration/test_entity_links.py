"""The warehouse links each row change to its booking as rows arrive, in any order, and again
when a map changes: audit rows inserted the way the writer inserts them, on the real server."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bookaudit.entity_map import parse_map
from bookaudit.warehouse.mapping import apply_map
from bookaudit.warehouse.schema import init_warehouse
from devstack import StackEnv
from tests.integration.harness import scratch_database
from tests.integration.schemas import JOBS, JOBS_MAP


@pytest.fixture
def warehouse(stack: StackEnv) -> Iterator[str]:
    with scratch_database(stack.admin_dsn) as dsn:
        init_warehouse(dsn, {"jobs": JOBS.entity_map})
        yield dsn


class Rows:
    """Appends audit rows one writer batch (an INSERT and its chain link) at a time."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.lsn = 0

    def add(
        self,
        source: str,
        table: str,
        key: dict[str, str],
        after: dict[str, Any] | None,
        before: dict[str, Any] | None = None,
    ) -> int:
        self.lsn += 16
        schema, name = table.split(".")
        action = "insert" if before is None else "update" if after is not None else "delete"
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "INSERT INTO audit.row_changes (source, commit_lsn, sequence, lsn, txid, "
                "committed_at, schema_name, table_name, action, row_key, before, after, "
                "actor_origin, kafka_topic, kafka_partition, kafka_offset) "
                "VALUES (%s, %s::pg_lsn, 0, %s::pg_lsn, 1, now(), %s, %s, %s, %s, %s, %s, "
                "'application', 't', 0, 0) RETURNING id",
                (
                    source,
                    f"0/{self.lsn:X}",
                    f"0/{self.lsn:X}",
                    schema,
                    name,
                    action,
                    json.dumps(key),
                    None if before is None else json.dumps(before),
                    None if after is None else json.dumps(after),
                ),
            ).fetchone()
            assert row is not None
            # The writer ends every batch with its chain link, which links the batch's rows.
            conn.execute("SELECT audit.chain_link(%s, %s)", ([row[0]], bytes(32)))
        return int(row[0])


def bookings_of(dsn: str, change: int) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT booking_id FROM audit.change_bookings WHERE change_id = %s", (change,)
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_a_payment_read_before_its_invoice_is_linked_when_the_invoice_arrives(
    warehouse: str,
) -> None:
    rows = Rows(warehouse)
    payment = rows.add(
        "jobs", "billing.payments", {"payment_id": "9001"},
        {"payment_id": "9001", "invoice_ref": "7001", "paid": "10.00"},
    )  # fmt: skip
    assert bookings_of(warehouse, payment) == set()
    invoice = rows.add(
        "jobs", "billing.invoices", {"invoice_no": "7001"},
        {"invoice_no": "7001", "job_ref": "J-1", "total": "10.00"},
    )  # fmt: skip
    assert bookings_of(warehouse, invoice) == {"J-1"}
    assert bookings_of(warehouse, payment) == {"J-1"}

    # The invoice moves to another job: it and its payment show in both jobs' histories.
    moved = rows.add(
        "jobs", "billing.invoices", {"invoice_no": "7001"},
        {"invoice_no": "7001", "job_ref": "J-2", "total": "10.00"},
        {"invoice_no": "7001", "job_ref": "J-1", "total": "10.00"},
    )  # fmt: skip
    assert bookings_of(warehouse, moved) == {"J-1", "J-2"}
    assert bookings_of(warehouse, payment) == {"J-1", "J-2"}
    # A later payment of the moved invoice belongs to both as well: every version counts.
    later = rows.add(
        "jobs", "billing.payments", {"payment_id": "9002"},
        {"payment_id": "9002", "invoice_ref": "7001", "paid": "1.00"},
    )  # fmt: skip
    assert bookings_of(warehouse, later) == {"J-1", "J-2"}


def test_the_same_names_in_two_sources_never_link_across(warehouse: str) -> None:
    rows = Rows(warehouse)
    rows.add(
        "jobs", "billing.invoices", {"invoice_no": "7001"},
        {"invoice_no": "7001", "job_ref": "J-1", "total": "10.00"},
    )  # fmt: skip
    other = rows.add(
        "jobs-eu", "billing.payments", {"payment_id": "9001"},
        {"payment_id": "9001", "invoice_ref": "7001", "paid": "10.00"},
    )  # fmt: skip
    # jobs-eu has no map of its own: it is read with the sample map, which has no such table.
    assert bookings_of(warehouse, other) == set()
    with psycopg.connect(warehouse) as conn:
        apply_map(conn, "jobs-eu", JOBS.entity_map)
    assert bookings_of(warehouse, other) == set()  # its invoice is in another source
    own = rows.add(
        "jobs-eu", "billing.invoices", {"invoice_no": "7001"},
        {"invoice_no": "7001", "job_ref": "J-9", "total": "10.00"},
    )  # fmt: skip
    assert bookings_of(warehouse, own) == bookings_of(warehouse, other) == {"J-9"}


def test_map_apply_relinks_only_when_the_map_changed(warehouse: str) -> None:
    rows = Rows(warehouse)
    note = rows.add(
        "jobs", "ops.job_notes", {"note_id": "1"}, {"note_id": "1", "job_ref": "J-1", "body": "x"}
    )
    sample = rows.add("bookings", "public.notes", {"id": "5"}, {"id": "5", "booking_id": "42"})
    assert bookings_of(warehouse, note) == {"J-1"} and bookings_of(warehouse, sample) == {"42"}

    without_notes = tomllib.loads(JOBS_MAP)["map"]
    without_notes["related"] = [r for r in without_notes["related"] if r["kind"] != "note"]
    with psycopg.connect(warehouse) as conn:
        assert apply_map(conn, "jobs", parse_map(without_notes, "edited"))
    assert bookings_of(warehouse, note) == set()
    assert bookings_of(warehouse, sample) == {"42"}  # another source, untouched
    with psycopg.connect(warehouse) as conn:
        assert apply_map(conn, "jobs", JOBS.entity_map)
        assert not apply_map(conn, "jobs", JOBS.entity_map)  # the same map: nothing to redo
    assert bookings_of(warehouse, note) == {"J-1"}

    # A warehouse initialised again keeps every link, and an existing one gains them.
    init_warehouse(warehouse)
    assert bookings_of(warehouse, note) == {"J-1"}
    with psycopg.connect(warehouse) as conn:
        conn.execute("DELETE FROM audit.booking_links")
        conn.execute("DELETE FROM audit.customer_links")
        conn.execute("DELETE FROM audit.row_refs")
        conn.execute("DELETE FROM audit.mapped_changes")
    init_warehouse(warehouse)
    assert bookings_of(warehouse, note) == {"J-1"} and bookings_of(warehouse, sample) == {"42"}


def test_a_writer_session_older_than_its_rows_still_links_by_index(warehouse: str) -> None:
    """A writer's session outlives the table sizes its plans were made for. PL/pgSQL caches a
    statement's plan per session: one cached while row_changes was empty looked up a batch's ids
    by scanning the whole table, every batch, until autovacuum happened to analyze it."""
    rows = Rows(warehouse)
    with psycopg.connect(warehouse, autocommit=True) as owner:
        # As autovacuum does early in a warehouse's life: statistics of a near-empty table.
        # Autovacuum itself stays off, as a later ANALYZE would drop the cached plans.
        owner.execute("ALTER TABLE audit.row_changes SET (autovacuum_enabled = off)")
        rows.add("other", "public.notes", {"id": "0"}, {"id": 0})
        owner.execute("ANALYZE audit.row_changes")
    with psycopg.connect(warehouse, autocommit=True) as writer:
        # The plan cache moves to a statement's generic plan after five custom ones when it
        # does not look dearer, which on a near-empty table is a close call; the session makes
        # it move at once, so the test does not depend on the call.
        writer.execute("SET plan_cache_mode = force_generic_plan")

        def link_batch() -> int:
            """One batch through the writer's session: its row scans of row_changes."""
            payment = rows.add(
                "jobs", "billing.payments", {"payment_id": "9001"},
                {"payment_id": "9001", "invoice_ref": "7001", "paid": "1.00"},
            )  # fmt: skip
            invoice = rows.add(
                "jobs", "billing.invoices", {"invoice_no": "7001"},
                {"invoice_no": "7001", "job_ref": "J-1", "total": "1.00"},
            )  # fmt: skip
            # The counts are the session's since its last report, which happens between
            # transactions only: the difference within one transaction is this call's.
            with writer.transaction():
                before = seq_scans()
                writer.execute("SELECT audit.link_changes(%s)", ([payment, invoice],))
                scans = seq_scans() - before
            assert bookings_of(warehouse, payment) == {"J-1"}
            return scans

        def seq_scans() -> int:
            row = writer.execute(
                "SELECT seq_scan FROM pg_stat_xact_user_tables "
                "WHERE schemaname = 'audit' AND relname = 'row_changes'"
            ).fetchone()
            return int(row[0]) if row else 0

        # Calls on a near-empty table, whose plans the session keeps.
        for _ in range(8):
            link_batch()
        with psycopg.connect(warehouse) as bulk:
            bulk.execute(
                "INSERT INTO audit.row_changes (source, commit_lsn, sequence, lsn, txid, "
                "committed_at, schema_name, table_name, action, row_key, after, actor_origin, "
                "kafka_topic, kafka_partition, kafka_offset) "
                "SELECT 'other', '1/0'::pg_lsn + g, 0, '1/0'::pg_lsn + g, 1, now(), 'public', "
                "'notes', 'insert', jsonb_build_object('id', g), jsonb_build_object('id', g), "
                "'application', 't', 0, g FROM generate_series(1, 20000) g"
            )
        assert link_batch() == 0
