"""A partitioned bookings table, audited as the one table its readers know, in both capture modes:
events, topics and warehouse rows name the partitioned table and never a partition; every change
carries its old values, the rows that existed at install are the baseline, each change its actor,
a row moving between partitions is one update, and a partition attached after install is audited
like the others."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from bookaudit.actor import Actor
from devstack import StackEnv
from tests.integration.harness import Pipeline
from tests.integration.schemas import SAMPLE
from tests.integration.workloads import SourceState, replayed, source_state, write_as

COLUMNS = ["id", "customer_id", "scheduled_start", "status", "price", "note"]
KEY = ("id", "scheduled_start")

# Named as the default entity map names them (public.bookings keyed by id), partitioned by the
# day the visit starts: the primary key must hold the partition key.
_DDL = """
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE bookings (
    id              bigint NOT NULL,
    customer_id     bigint NOT NULL,
    scheduled_start timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'booked',
    price           numeric(10, 2) NOT NULL,
    note            text,
    PRIMARY KEY (id, scheduled_start)
) PARTITION BY RANGE (scheduled_start);
CREATE TABLE bookings_2026q4 PARTITION OF bookings
    FOR VALUES FROM ('2026-10-01 00:00+00') TO ('2027-01-01 00:00+00');
CREATE TABLE bookings_2027q1 PARTITION OF bookings
    FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-04-01 00:00+00');
CREATE TABLE bookings_other PARTITION OF bookings DEFAULT;
INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');
INSERT INTO bookings (id, customer_id, scheduled_start, price, note) VALUES
    (101, 1, '2026-11-03 09:00+00', 120.00, 'gate code 4711'),
    (102, 1, '2026-12-10 14:30+00', 95.50, NULL),
    (103, 2, '2027-01-15 08:00+00', 310.00, 'two boilers'),
    (104, 2, '2027-03-01 10:00+00', 75.25, NULL),
    (105, 1, '2028-06-01 12:00+00', 80.00, 'far ahead'),
    (106, 2, '2025-01-20 16:00+00', 60.00, 'long past');
"""

PARTITIONED = replace(
    SAMPLE,
    name="partitioned",
    create=lambda dsn: _run(dsn, _DDL),
    tables=("public.customers", "public.bookings"),
)


def _run(dsn: str, statements: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(statements.encode())


@pytest.fixture(params=["logical", "trigger"])
def partitioned(stack: StackEnv, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """A source holding a partitioned bookings table with rows in each partition, installed."""
    p = Pipeline(stack, mode=request.param, schema=PARTITIONED).create()
    yield p
    p.drop()


def _source_state(p: Pipeline) -> SourceState:
    with p.owner() as conn:
        return source_state(conn, sql.Identifier("bookings"), COLUMNS, KEY)


def _write(p: Pipeline, actor: str, *statements: str) -> None:
    """One transaction of the application, as its own non-owner role, naming its user."""
    write_as(p.app_dsn, Actor(actor, role="dispatcher"), statements)


def test_a_partitioned_table_is_audited_as_one_table(partitioned: Pipeline) -> None:
    p = partitioned
    _write(p, "alice", "UPDATE bookings SET price = 130.00 WHERE id = 101")
    # One statement: 102 moves into the next quarter, 104 into the default partition, 103
    # changes in place.
    _write(
        p,
        "bob",
        "UPDATE bookings SET status = 'moved', scheduled_start = CASE id "
        "WHEN 102 THEN timestamptz '2027-01-10 14:30+00' "
        "WHEN 103 THEN timestamptz '2027-02-15 08:00+00' "
        "ELSE timestamptz '2027-08-01 10:00+00' END WHERE id IN (102, 103, 104)",
    )
    _write(
        p,
        "carol",
        "DELETE FROM bookings WHERE id = 106",
        "INSERT INTO bookings (id, customer_id, scheduled_start, price) "
        "VALUES (107, 1, '2026-10-05 07:00+00', 99.00)",
    )
    # The application's own delete and insert of a row stay a delete and an insert.
    _write(
        p,
        "dana",
        "DELETE FROM bookings WHERE id = 105",
        "INSERT INTO bookings (id, customer_id, scheduled_start, price, note) "
        "VALUES (105, 1, '2027-02-01 12:00+00', 80.00, 'replanned')",
    )
    # A partition attached after install, by the owner's migration, then written by the
    # application, straight into the partition as well as through the table.
    p.migrate(
        "CREATE TABLE bookings_2027q2 (LIKE bookings)",
        "ALTER TABLE bookings ATTACH PARTITION bookings_2027q2 "
        "FOR VALUES FROM ('2027-04-01 00:00+00') TO ('2027-07-01 00:00+00')",
    )
    _write(
        p,
        "erin",
        "INSERT INTO bookings (id, customer_id, scheduled_start, price) "
        "VALUES (108, 2, '2027-05-02 09:00+00', 210.00)",
        "UPDATE bookings SET scheduled_start = '2027-06-30 09:00+00' WHERE id = 103",
    )
    _write(
        p, "frank", "UPDATE bookings_2027q2 SET price = 205.00, note = 'discount' WHERE id = 108"
    )
    _write(p, "gina", "DELETE FROM bookings_2027q2 WHERE id = 103")

    p.flow()

    state, actions = replayed(p, "bookings", KEY)
    assert state == _source_state(p)
    assert actions == Counter(existing=6, insert=3, update=6, delete=3)
    # The partitioned table, never a partition, in the warehouse and on Kafka.
    tables = p.warehouse("SELECT DISTINCT schema_name, table_name FROM audit.row_changes")
    assert set(tables) == {("public", "bookings"), ("public", "customers")}
    topics = p.warehouse("SELECT DISTINCT kafka_topic FROM audit.row_changes")
    assert {t for (t,) in topics} == {f"{p.prefix}.public.bookings", f"{p.prefix}.public.customers"}

    moves = p.warehouse(
        "SELECT before->>'id', before->>'scheduled_start', after->>'scheduled_start', "
        "after->>'status', actor FROM audit.row_changes "
        "WHERE action = 'update' AND before->>'scheduled_start' <> after->>'scheduled_start'"
    )
    assert sorted(moves) == [
        ("102", "2026-12-10 14:30:00+00", "2027-01-10 14:30:00+00", "moved", "bob"),
        ("103", "2027-01-15 08:00:00+00", "2027-02-15 08:00:00+00", "moved", "bob"),
        ("103", "2027-02-15 08:00:00+00", "2027-06-30 09:00:00+00", "moved", "erin"),
        ("104", "2027-03-01 10:00:00+00", "2027-08-01 10:00:00+00", "moved", "bob"),
    ]

    # The history of a booking that moved twice, the second time into the new partition.
    entries = json.loads(p.cli("history", "booking", "103", "--format", "json").stdout)
    assert {e["table"] for e in entries} == {"bookings"}
    changed = [(e["action"], e["actor"], e["field"], e["old"], e["new"]) for e in entries
               if e["action"] != "existing"]  # fmt: skip
    assert changed[:3] == [
        ("update", "bob", "scheduled_start", "2027-01-15 08:00:00+00", "2027-02-15 08:00:00+00"),
        ("update", "bob", "status", "booked", "moved"),
        ("update", "erin", "scheduled_start", "2027-02-15 08:00:00+00", "2027-06-30 09:00:00+00"),
    ]
    deleted = {(e[2], e[3]) for e in changed[3:] if e[:2] == ("delete", "gina")}
    assert len(deleted) == len(changed) - 3 == len(COLUMNS)
    assert ("scheduled_start", "2027-06-30 09:00:00+00") in deleted
    assert ("note", "two boilers") in deleted and ("status", "moved") in deleted


def _bookaudit_hooks(p: Pipeline) -> list[tuple[str, str, str]]:
    """Every bookaudit trigger on the bookings tables, and each one's replica identity."""
    with p.owner() as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relreplident::text, coalesce(string_agg(t.tgname, ',' "
            "ORDER BY t.tgname), '') FROM pg_class c LEFT JOIN pg_trigger t "
            "ON t.tgrelid = c.oid AND t.tgname LIKE '%%bookaudit%%' "
            "WHERE c.relname LIKE 'bookings%%' AND c.relkind IN ('r', 'p') "
            "GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_install_adopts_new_partitions_and_uninstall_leaves_none(partitioned: Pipeline) -> None:
    """A rerun of install adopts a partition attached since, and upgrades a publication made
    without publish_via_partition_root; uninstall takes every trace off every partition."""
    p = partitioned
    p.migrate(
        "CREATE TABLE bookings_2027q2 (LIKE bookings)",
        "ALTER TABLE bookings ATTACH PARTITION bookings_2027q2 "
        "FOR VALUES FROM ('2027-04-01 00:00+00') TO ('2027-07-01 00:00+00')",
    )
    if p.mode == "logical":
        with p.owner() as conn:
            conn.execute("ALTER PUBLICATION bookaudit SET (publish_via_partition_root = false)")
    p.cli("source", "install", "--table", "customers", "--table", "bookings")
    hooks = _bookaudit_hooks(p)
    if p.mode == "logical":
        with p.owner() as conn:
            via_root = conn.execute(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = 'bookaudit'"
            ).fetchone()
        assert via_root == (True,)
        on_partition = "bookaudit_context,zz_bookaudit_partition"
        assert hooks == [
            ("bookings", "f", "bookaudit_context,bookaudit_moves_begin,bookaudit_moves_end,"
                              "zz_bookaudit_partition"),
            *[(name, "f", on_partition) for name in
              ("bookings_2026q4", "bookings_2027q1", "bookings_2027q2", "bookings_other")],
        ]  # fmt: skip
    else:
        on_partition = "0_bookaudit_outbox,bookaudit_context"
        assert hooks == [
            ("bookings", "d", "0_bookaudit_outbox,0_bookaudit_truncate,bookaudit_context,"
                              "bookaudit_moves_begin,bookaudit_moves_end"),
            *[(name, "d", on_partition) for name in
              ("bookings_2026q4", "bookings_2027q1", "bookings_2027q2", "bookings_other")],
        ]  # fmt: skip
    p.capture()  # nothing written: a capture that starts and drains the baseline
    p.cli("source", "uninstall")
    assert _bookaudit_hooks(p) == [
        (name, "d", "")
        for name in ("bookings", "bookings_2026q4", "bookings_2027q1", "bookings_2027q2",
                     "bookings_other")
    ]  # fmt: skip
