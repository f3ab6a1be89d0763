"""Tables beyond the plain ones: generated columns, and (trigger mode) columns that change while
changes wait in the outbox; each made in the PostgreSQL schema of a source schema's own tables
(`public`, `ops`), in both capture modes."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from psycopg import sql

from tests.integration.harness import Pipeline, wait_for


def _own(p: Pipeline, table: str) -> tuple[str, sql.Identifier]:
    """A new table beside the schema's bookings, as `--table` names it and as SQL does."""
    schema = p.schema.bookings_table.schema
    return f"{schema}.{table}", sql.Identifier(schema, table)


STAYS = (
    "CREATE TABLE {} (id bigint PRIMARY KEY, nights int NOT NULL, rate numeric(8,2), "
    "total numeric GENERATED ALWAYS AS (nights * rate) STORED)"
)


def test_generated_columns_are_left_out_in_both_modes(schema_pipeline: Pipeline) -> None:
    """pgoutput sends no generated columns, so trigger mode leaves them out too."""
    pipeline = schema_pipeline
    name, stays = _own(pipeline, "stay_lines")
    pipeline.migrate(sql.SQL(STAYS).format(stays))
    pipeline.cli("source", "install", "--table", name)
    with pipeline.source() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, nights, rate) VALUES (1, 2, 80.50)").format(stays)
        )
        conn.commit()
        conn.execute(sql.SQL("UPDATE {} SET nights = 3 WHERE id = 1").format(stays))
    pipeline.flow()

    where = (pipeline.schema.bookings_table.schema,)
    rows = pipeline.warehouse(
        "SELECT action, before, after FROM audit.row_changes WHERE schema_name = %s "
        "AND table_name = 'stay_lines' ORDER BY id",
        where,
    )
    assert rows == [
        ("insert", None, {"id": "1", "nights": "2", "rate": "80.50"}),
        (
            "update",
            {"id": "1", "nights": "2", "rate": "80.50"},
            {"id": "1", "nights": "3", "rate": "80.50"},
        ),
    ]
    fields = pipeline.warehouse(
        "SELECT f.field FROM audit.field_changes f JOIN audit.row_changes r ON r.id = f.change_id "
        "WHERE r.schema_name = %s AND r.table_name = 'stay_lines' AND r.action = 'update' "
        "ORDER BY 1",
        where,
    )
    assert fields == [("nights",)]


RATES = (
    "CREATE TABLE {} (id bigint PRIMARY KEY, amount numeric(10,2) NOT NULL, memo text, legacy text)"
)
# Each step: the DDL, then a change written right after it.
STEPS = (
    ("ALTER TABLE {} ADD COLUMN region text DEFAULT 'north'", "memo = 'b'"),
    ("ALTER TABLE {} RENAME COLUMN memo TO note", "note = 'c'"),
    ("ALTER TABLE {} DROP COLUMN legacy", "note = 'd'"),
    ("ALTER TABLE {} ALTER COLUMN amount TYPE numeric(12,4)", "note = 'e'"),
)
V1 = {"id": "1", "amount": "12.50", "memo": "a", "legacy": "old"}
V2 = {**V1, "region": "north"}
V3 = {"id": "1", "amount": "12.50", "note": "b", "legacy": "old", "region": "north"}
V4 = {"id": "1", "amount": "12.50", "note": "c", "region": "north"}
V5 = {"id": "1", "amount": "12.5000", "note": "d", "region": "north"}
EXPECTED = [
    ("insert", None, V1),
    ("update", V2, {**V2, "memo": "b"}),
    ("update", V3, {**V3, "note": "c"}),
    ("update", V4, {**V4, "note": "d"}),
    ("update", V5, {**V5, "note": "e"}),
]


def _caught_up(p: Pipeline) -> bool:
    """Trigger mode: the relay took every queued change (the outbox is empty). Logical mode reads
    each change with the Relation message the WAL stream sends before it, so there is nothing to
    wait for: a capture stopped early leaves the rest in the slot for the final flow()."""
    if p.mode == "logical":
        return True
    with p.owner() as conn:  # the application role cannot see the outbox
        row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM bookaudit.outbox)").fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("capture", ["running", "stopped"])
def test_queued_changes_keep_the_columns_and_types_they_were_written_with(
    schema_pipeline: Pipeline, capture: str
) -> None:
    """ADD, RENAME, DROP COLUMN and ALTER TYPE, each followed by a change: every change reads as
    the table was when it was written, whether the capture ran through the DDL or was stopped."""
    pipeline = schema_pipeline
    name, rates = _own(pipeline, "rate_cards")
    pipeline.migrate(sql.SQL(RATES).format(rates))
    pipeline.cli("source", "install", "--table", name)
    with pipeline.running("capture") if capture == "running" else nullcontext() as running:
        # The owner migrates the table; the application writes between the migrations.
        with pipeline.owner() as owner, pipeline.source() as conn:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 12.50, 'a', 'old')").format(rates))
            conn.commit()
            for ddl, change in STEPS:
                if running is not None:
                    wait_for("the capture to take the last change", lambda: _caught_up(pipeline))
                owner.execute(sql.SQL(ddl).format(rates))
                owner.commit()
                conn.execute(sql.SQL("UPDATE {} SET " + change + " WHERE id = 1").format(rates))
                conn.commit()
        if running is not None:
            wait_for("the capture to take the last change", lambda: _caught_up(pipeline))
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT action, before, after FROM audit.row_changes WHERE schema_name = %s "
        "AND table_name = 'rate_cards' ORDER BY commit_lsn, sequence",
        (pipeline.schema.bookings_table.schema,),
    )
    assert rows == EXPECTED
