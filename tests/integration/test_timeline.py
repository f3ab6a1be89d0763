"""The labelled timeline, as-of and diff against the source's real state, and the daily log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from bookaudit.actor import Actor
from bookaudit.entity_map import Entity, TableRef
from devstack import StackEnv
from tests.integration.harness import Pipeline
from tests.integration.schemas import Key, Schema
from tests.integration.workloads import write_as, write_labelled_workload

State = dict[tuple[str, str], dict[str, str | None]]


@pytest.fixture
def logical(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    """Labels and filters read the warehouse only: one capture mode is enough for them."""
    p = Pipeline(stack, schema=schema).create()
    yield p
    p.drop()


def _table(ref: TableRef) -> sql.Identifier:
    return sql.Identifier(ref.schema, ref.name)


def _where(schema: Schema, entity: Entity) -> sql.Composable:
    """The condition that picks the rows of `entity` naming booking %(b)s, read from the map
    alone: the booking's key, the related row's booking column, or the row it goes through."""
    if entity.kind == "booking":
        return sql.SQL("{} = %(b)s").format(sql.Identifier(schema.booking_key))
    if entity.booking_column is not None:
        return sql.SQL("{} = %(b)s").format(sql.Identifier(entity.booking_column))
    assert entity.through is not None and entity.through_column is not None
    [through] = [e for e in schema.entity_map.related if e.table == entity.through]
    return sql.SQL("{} IN (SELECT {} FROM {} WHERE {})").format(
        sql.Identifier(entity.through_column),
        sql.Identifier(_primary_key_of(schema, through.table)),
        _table(through.table),
        _where(schema, through),
    )


def _primary_key_of(schema: Schema, table: TableRef) -> str:
    mapped = [e.key for e in schema.entity_map.entities if e.table == table and e.key]
    return mapped[0] if mapped else "id"


def _state(p: Pipeline, booking: Key) -> State:
    """The booking and its related rows as the source holds them now, each value in its
    PostgreSQL text form (the form the pipeline carries), keyed by (table, row key)."""
    schema = p.schema
    state: State = {}
    with psycopg.connect(p.source_dsn, row_factory=dict_row) as conn:
        for entity in (schema.entity_map.booking, *schema.entity_map.related):
            table = entity.table
            names = [
                r["column_name"]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                    (table.schema, table.name),
                )
            ]
            [key] = [
                r["attname"]
                for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
                    "WHERE i.indrelid = %s::regclass AND i.indisprimary",
                    (f"{table.schema}.{table.name}",),
                )
            ]
            query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{}::text AS {}").format(sql.Identifier(n), sql.Identifier(n))
                    for n in names
                ),
                _table(table),
                _where(schema, entity),
            )
            for row in conn.execute(query, {"b": booking}):
                state[(table.name, str(row[key]))] = dict(row)
    return state


def _moment(dsn: str) -> datetime:
    """A moment between two commits: the last one is before it, the next one well after."""
    time.sleep(0.005)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    time.sleep(0.005)
    return row[0]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Story:
    """One schema's spelling of the as-of story: a booking from before the install (with its
    note), then one booking's life as the office lives it, one transaction per step."""

    existing: Key
    booking: Key
    before_install: tuple[str, ...]  # as the owner, before capture is installed
    steps: tuple[tuple[str, str, str], ...]  # (actor, role, "; "-separated statements)
    after: tuple[str, ...]  # the pre-existing booking's changes after install, %(e)s
    cancelled: str  # the status value of a cancelled booking


STORIES = {
    "sample": Story(
        existing=6001,
        booking=7001,
        before_install=(
            "INSERT INTO customers (id, name) VALUES (900, 'Old customer')",
            "INSERT INTO bookings (id, customer_id, service, address, price, scheduled_start) "
            "VALUES (%(e)s, 900, 'Gutter clean', 'Canal 5', 80.00, '2026-11-20 09:00+00')",
            "INSERT INTO notes (booking_id, author, body) VALUES (%(e)s, 'eve', 'Ladder needed')",
        ),
        steps=(
            ("dana", "dispatcher", "INSERT INTO bookings (id, customer_id, service, address, price) "
             "VALUES (%(b)s, %(c)s, 'Boiler service', 'Main St 1', 120.00)"),
            ("dana", "dispatcher", "UPDATE bookings SET scheduled_start = '2026-11-27 08:00+00', "
             "scheduled_end = '2026-11-27 10:00+00', status = 'scheduled' WHERE id = %(b)s; "
             "INSERT INTO assignments (booking_id, fieldworker) VALUES (%(b)s, 'finn')"),
            ("alice", "admin", "UPDATE bookings SET price = 149.90, updated_at = now() "
             "WHERE id = %(b)s"),
            ("dana", "dispatcher", "DELETE FROM assignments WHERE booking_id = %(b)s; "
             "INSERT INTO assignments (booking_id, fieldworker) VALUES (%(b)s, 'gus'); "
             "UPDATE bookings SET scheduled_start = '2026-11-28 14:00+00', "
             "scheduled_end = '2026-11-28 16:00+00' WHERE id = %(b)s"),
            ("gus", "fieldworker", "INSERT INTO notes (booking_id, author, body) "
             "VALUES (%(b)s, 'gus', 'Gate code 4411')"),
            ("olga", "billing", "INSERT INTO invoices (booking_id, number, amount) "
             "VALUES (%(b)s, 'INV-' || %(b)s, 149.90)"),
            ("olga", "billing", "UPDATE invoices SET status = 'sent', sent_at = now() "
             "WHERE booking_id = %(b)s"),
            ("olga", "billing", "INSERT INTO payments (booking_id, amount, method) "
             "VALUES (%(b)s, 149.90, 'card')"),
            ("gus", "fieldworker", "UPDATE notes SET body = 'Gate code 4412' "
             "WHERE booking_id = %(b)s"),
            ("dana", "dispatcher", "UPDATE bookings SET status = 'cancelled' WHERE id = %(b)s"),
        ),
        after=(
            "UPDATE bookings SET price = 95.00 WHERE id = %(e)s",
            "UPDATE notes SET body = 'Ladder and gloves' WHERE booking_id = %(e)s",
        ),
        cancelled="cancelled",
    ),
    # The same story on the jobs schema: the fieldworker is a column of the job, the invoice
    # is sent when issued, and the payment names its invoice, not the job.
    "jobs": Story(
        existing="J-6001",
        booking="J-7001",
        before_install=(
            "INSERT INTO ops.clients (client_no, full_name) VALUES ('C-900', 'Old customer')",
            "INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total, window_from) "
            "VALUES (%(e)s, 'C-900', 'Gutter clean', 80.00, '2026-11-20 09:00+00')",
            "INSERT INTO ops.job_notes (job_ref, body) VALUES (%(e)s, 'Ladder needed')",
        ),
        steps=(
            ("dana", "dispatcher", "INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
             "VALUES (%(b)s, %(c)s, 'Boiler service', 120.00)"),
            ("dana", "dispatcher", "UPDATE ops.jobs SET window_from = '2026-11-27 08:00+00', "
             "window_to = '2026-11-27 10:00+00', state = 'scheduled', technician = 'finn' "
             "WHERE job_no = %(b)s"),
            ("alice", "admin", "UPDATE ops.jobs SET quoted_total = 149.90, modified_at = now() "
             "WHERE job_no = %(b)s"),
            ("dana", "dispatcher", "UPDATE ops.jobs SET technician = NULL WHERE job_no = %(b)s; "
             "UPDATE ops.jobs SET technician = 'gus' WHERE job_no = %(b)s; "
             "UPDATE ops.jobs SET window_from = '2026-11-28 14:00+00', "
             "window_to = '2026-11-28 16:00+00' WHERE job_no = %(b)s"),
            ("gus", "fieldworker", "INSERT INTO ops.job_notes (job_ref, body) "
             "VALUES (%(b)s, 'Gate code 4411')"),
            ("olga", "billing", "INSERT INTO billing.invoices (job_ref, total) "
             "VALUES (%(b)s, 149.90)"),
            ("olga", "billing", "UPDATE billing.invoices SET issued_at = now() "
             "WHERE job_ref = %(b)s"),
            ("olga", "billing", "INSERT INTO billing.payments (invoice_ref, paid) "
             "SELECT invoice_no, 149.90 FROM billing.invoices WHERE job_ref = %(b)s"),
            ("gus", "fieldworker", "UPDATE ops.job_notes SET body = 'Gate code 4412' "
             "WHERE job_ref = %(b)s"),
            ("dana", "dispatcher", "UPDATE ops.jobs SET state = 'void' WHERE job_no = %(b)s"),
        ),
        after=(
            "UPDATE ops.jobs SET quoted_total = 95.00 WHERE job_no = %(e)s",
            "UPDATE ops.job_notes SET body = 'Ladder and gloves' WHERE job_ref = %(e)s",
        ),
        cancelled="void",
    ),
}  # fmt: skip


@pytest.fixture
def preinstalled(fresh: Pipeline) -> Pipeline:
    """A source with a booking (and its note) from before the install: its as-of starts from
    the install's baseline."""
    story = STORIES[fresh.schema.name]
    with psycopg.connect(fresh.source_dsn, autocommit=True) as conn:
        for statement in story.before_install:
            conn.execute(statement, {"e": story.existing})
    fresh.install()
    return fresh


def test_as_of_and_diff_rebuild_the_source_state_at_known_moments(preinstalled: Pipeline) -> None:
    pipeline = preinstalled
    dsn = pipeline.source_dsn
    n, fields = pipeline.schema.names, pipeline.schema.entity_map.booking.fields
    story = STORIES[pipeline.schema.name]
    booking, existing = story.booking, story.existing
    moments: list[tuple[datetime, State]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        customer = pipeline.schema.new_customer(conn, "Ada")
    before_any = _moment(dsn)
    existing_at_install = _state(pipeline, existing)
    existing_moments: list[tuple[datetime, State]] = [(before_any, existing_at_install)]

    for actor, role, statements in story.steps:
        write_as(
            pipeline.app_dsn,
            Actor(actor, role=role),
            statements.split("; "),
            {"b": booking, "c": customer},
        )
        moments.append((_moment(dsn), _state(pipeline, booking)))
    # The pre-existing booking changes after install: its state before comes from the baseline.
    write_as(pipeline.app_dsn, Actor("dana", role="dispatcher"), story.after, {"e": existing})
    existing_moments.append((_moment(dsn), _state(pipeline, existing)))
    # The source state reaches every kind of row, the payment through its invoice on jobs.
    touched = {n[t] for t in ("bookings", "notes", "invoices", "payments")}
    assert {table for table, _row in moments[-1][1]} >= touched
    pipeline.flow()

    with psycopg.connect(pipeline.warehouse_dsn, row_factory=dict_row) as wh:

        def as_of(key: Key, at: datetime) -> State:
            rows = wh.execute(
                "SELECT table_name, row_id, row_data FROM audit.booking_as_of(%s, %s)",
                (str(key), at),
            ).fetchall()
            return {(r["table_name"], r["row_id"]): r["row_data"] for r in rows}

        assert as_of(booking, before_any) == {}
        for at, expected in moments:
            assert as_of(booking, at) == expected, f"as of {at}"
        for at, expected in existing_moments:
            assert as_of(existing, at) == expected, f"{existing} as of {at}"
        assert existing_moments[0][1][(n["bookings"], str(existing))][n["price"]] == "80.00"

        # The diff between the price change and the cancellation, field by field, with who.
        (t1, s1), (t2, s2) = moments[2], moments[9]
        diff = wh.execute(
            "SELECT * FROM audit.booking_diff(%s, %s, %s)", (str(booking), t1, t2)
        ).fetchall()
        expected_fields = {
            (table, row, f)
            for table, row in s1.keys() | s2.keys()
            for f in (s1.get((table, row)) or s2[(table, row)])
            if f != n["updated_at"]
            and (s1.get((table, row)) or {}).get(f) != (s2.get((table, row)) or {}).get(f)
        }
        assert {(d["table_name"], d["row_id"], d["field"]) for d in diff} == expected_fields
        by_field = {(d["table_name"], d["field"]): d for d in diff}
        status = by_field[(n["bookings"], fields.status[0])]
        assert (status["value_at_t1"], status["value_at_t2"], status["changed_by"]) == (
            "scheduled", story.cancelled, "dana",
        )  # fmt: skip
        assert by_field[(n["bookings"], fields.schedule[0])]["changed_by"] == "dana"
        assert by_field[(n["notes"], "body")]["value_at_t1"] is None
        assert by_field[(n["notes"], "body")]["value_at_t2"] == "Gate code 4412"
        assert (n["bookings"], n["price"]) not in by_field  # changed before t1, not between

    # The CLI gives the same answers, with its times read in --tz.
    at, expected = moments[3]
    shown = json.loads(
        pipeline.cli(
            "history", "booking", str(booking), "--as-of", at.isoformat(), "--format", "json"
        ).stdout
    )
    assert {(r["table"], r["row"], r["field"]): r["value"] for r in shown} == {
        (t, row, f): v for (t, row), values in expected.items() for f, v in values.items()
    }
    moved = json.loads(
        pipeline.cli(
            "history", "booking", str(booking), "--diff", t1.isoformat(), t2.isoformat(),
            "--format", "json",
        ).stdout
    )  # fmt: skip
    assert {(d["table"], d["row"], d["field"]) for d in moved} == expected_fields
    none = pipeline.cli("history", "booking", str(booking), "--as-of", before_any.isoformat())
    assert none.stdout == "" and "did not exist" in none.stderr


def _json(p: Pipeline, *args: str) -> Any:
    return json.loads(p.cli("history", *args, "--format", "json").stdout)


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[int, str] = {}
    for r in rows:
        seen.setdefault(r["change_id"], r["label"])
    return list(seen.values())


def test_labelled_timeline_filters_and_log(logical: Pipeline) -> None:
    p = logical
    ids = write_labelled_workload(p.app_dsn, p.schema)  # as the application: the non-owner role
    p.flow()
    main = str(ids["main"])
    n, fields = p.schema.names, p.schema.entity_map.booking.fields

    history = _json(p, "booking", main)
    assert _labels(history) == [
        "Booking created",
        "Scheduled",
        "Rescheduled",
        "Price changed",
        "Status changed",
        "Assigned to finn",
        "Unassigned finn",
        "Note added",
        "Invoice created",
        "Invoice sent",
        "Payment recorded",
        "Refund recorded",
        "Updated",
        "Cancelled",
        "Price changed",
    ]
    # updated_at is noise: hidden from the timeline, still in the warehouse.
    assert all(r["field"] != n["updated_at"] for r in history)
    with psycopg.connect(p.warehouse_dsn) as wh:
        kept = wh.execute(
            "SELECT count(*) FROM audit.field_changes WHERE field = %s", (n["updated_at"],)
        ).fetchone()
        assert kept is not None and kept[0] >= 1
    price = [r for r in history if r["label"] == "Price changed"]
    assert [(r["actor"], r["old"], r["new"], r["approval_ref"]) for r in price] == [
        ("alice", "149.00", "189.50", "APR-1042"),
        (f"{p.app_role} (db role via psql)", "189.50", "99.00", None),
    ]
    assert {r["booking_id"] for r in history} == {main} and {r["source"] for r in history} == {
        "bookings"
    }
    assert _labels(_json(p, "booking", str(ids["gone"]))) == ["Booking created", "Deleted"]

    # The table reads like the office's history page: label, who, old → new, approval.
    table = p.cli("history", "booking", main, "--tz", "Europe/Amsterdam").stdout
    line = next(x for x in table.splitlines() if "Rescheduled" in x)
    assert "dana (dispatcher)" in line
    assert f"{fields.schedule[0]} 27 Nov 2026 09:00 → 28 Nov 2026 15:00" in line
    assert "approval APR-1042; second unit" in next(x for x in table.splitlines() if "alice" in x)
    utc = p.cli("history", "booking", main, "--tz", "UTC").stdout
    assert "27 Nov 2026 08:00 → 28 Nov 2026 14:00" in utc

    # Filters: label, actor, field, time window, source.
    assert _labels(_json(p, "booking", main, "--label", "price")) == ["Price changed"] * 2
    assert _labels(_json(p, "booking", main, "--label", "assigned")) == [
        "Assigned to finn", "Unassigned finn",
    ]  # fmt: skip
    assert {r["actor"] for r in _json(p, "booking", main, "--actor", "olga")} == {"olga"}
    assert _labels(_json(p, "booking", main, "--actor", p.app_role)) == ["Price changed"]
    status = fields.status[0]
    assert {r["field"] for r in _json(p, "booking", main, "--field", status)} == {status}
    stamps = sorted({r["committed_at"] for r in history})
    window = _json(p, "booking", main, "--since", stamps[1], "--until", stamps[2], "--tz", "UTC")
    assert window and all(stamps[1] <= r["committed_at"] <= stamps[2] for r in window)
    assert _json(p, "booking", main, "--source", "bookings") == history
    wrong = p.cli("history", "booking", main, "--source", "other", check=False)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "'other'" in wrong.stderr

    # CSV: today's keys plus booking_id, label, change_id, source; nothing found: a line, exit 0.
    csv_out = p.cli("history", "booking", main, "--format", "csv").stdout.splitlines()
    assert csv_out[0].split(",")[:13] == [
        "committed_at", "actor", "actor_role", "action", "table", "field", "old", "new", "txid",
        "booking_id", "label", "change_id", "source",
    ]  # fmt: skip
    assert len(csv_out) == len(history) + 1
    empty = p.cli("history", "booking", "999999", "--format", "csv")
    assert empty.returncode == 0 and "no audit entries for booking 999999" in empty.stderr
    assert json.loads(p.cli("history", "actor", "nobody", "--format", "json").stdout) == []

    # Customer and actor: the same entries, across bookings.
    customer = _json(p, "customer", str(ids["customer"]))
    assert {r["booking"] for r in customer} == {main, str(ids["gone"]), None}
    olga = _json(p, "actor", "olga")
    assert _labels(olga) == [
        "Invoice created",
        "Invoice sent",
        "Payment recorded",
        "Refund recorded",
    ]

    # The log: entries, per-booking counts and per-actor totals; the views agree.
    today = ("--since", stamps[0][:10], "--tz", "UTC")
    log = _json(p, "log", *today)
    assert [r["event"] for r in log if r["label"] in ("Booking created", "Deleted")] == [
        "created", "created", "deleted",
    ]  # fmt: skip
    counts = {c["booking_id"]: c for c in _json(p, "log", *today, "--per", "booking")}
    assert {k: counts[main][k] for k in ("reschedules", "cancellations", "price_changes", "status_changes")} == {
        "reschedules": 1, "cancellations": 1, "price_changes": 2, "status_changes": 2,
    }  # fmt: skip
    totals = {t["actor"]: t for t in _json(p, "log", *today, "--per", "actor")}
    assert totals["dana"]["created"] == 2 and totals["dana"]["bookings"] == 2
    assert totals["olga"]["entries"] == 4
    with psycopg.connect(p.warehouse_dsn, row_factory=dict_row) as wh:
        by_sql = wh.execute(
            "SELECT count(*) FILTER (WHERE rescheduled) AS reschedules, "
            "count(*) FILTER (WHERE cancelled) AS cancellations, "
            "count(*) FILTER (WHERE price_changed) AS price_changes, "
            "count(*) FILTER (WHERE status_changed) AS status_changes "
            "FROM audit.booking_history_log WHERE booking_id = %s",
            (main,),
        ).fetchone()
        assert by_sql is not None and by_sql == {k: counts[main][k] for k in by_sql}
        per_actor = {
            r["actor"]: r["count"]
            for r in wh.execute(
                # Baseline entries are nobody's work, so the totals leave them out.
                "SELECT actor, count(*) FROM audit.booking_history_log "
                "WHERE event <> 'existing at install' GROUP BY actor"
            )
        }
        assert per_actor == {a: t["entries"] for a, t in totals.items()}
    printed = p.cli("history", "log", *today).stdout
    assert "Per booking:" in printed and "Per actor:" in printed and "Cancelled" in printed
    quiet = p.cli("history", "log", "--since", "2000-01-01")
    assert quiet.stdout == "" and quiet.stderr.startswith("log: no booking")
