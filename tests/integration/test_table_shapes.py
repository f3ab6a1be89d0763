"""Tables beyond the plain ones: generated columns, and (trigger mode) columns that change while
changes wait in the outbox."""

from __future__ import annotations

import pytest

from tests.integration.harness import Pipeline, wait_for

STAYS = (
    "CREATE TABLE stay_lines (id bigint PRIMARY KEY, nights int NOT NULL, rate numeric(8,2), "
    "total numeric GENERATED ALWAYS AS (nights * rate) STORED)"
)


def test_generated_columns_are_left_out_in_both_modes(pipeline: Pipeline) -> None:
    """pgoutput sends no generated columns, so trigger mode leaves them out too."""
    pipeline.migrate(STAYS)
    pipeline.cli("source", "install", "--table", "stay_lines")
    with pipeline.source() as conn:
        conn.execute("INSERT INTO stay_lines (id, nights, rate) VALUES (1, 2, 80.50)")
        conn.commit()
        conn.execute("UPDATE stay_lines SET nights = 3 WHERE id = 1")
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT action, before, after FROM audit.row_changes WHERE table_name = 'stay_lines' "
        "ORDER BY id"
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
        "WHERE r.table_name = 'stay_lines' AND r.action = 'update' ORDER BY 1"
    )
    assert fields == [("nights",)]


RATES = (
    "CREATE TABLE rate_cards (id bigint PRIMARY KEY, amount numeric(10,2) NOT NULL, "
    "memo text, legacy text)"
)
# Each step: the DDL, then a change written right after it.
STEPS = (
    ("ALTER TABLE rate_cards ADD COLUMN region text DEFAULT 'north'", "memo = 'b'"),
    ("ALTER TABLE rate_cards RENAME COLUMN memo TO note", "note = 'c'"),
    ("ALTER TABLE rate_cards DROP COLUMN legacy", "note = 'd'"),
    ("ALTER TABLE rate_cards ALTER COLUMN amount TYPE numeric(12,4)", "note = 'e'"),
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
    pipeline: Pipeline, capture: str
) -> None:
    """ADD, RENAME, DROP COLUMN and ALTER TYPE, each followed by a change: every change reads as
    the table was when it was written, whether the capture ran through the DDL or was stopped."""
    pipeline.migrate(RATES)
    pipeline.cli("source", "install", "--table", "rate_cards")
    running = pipeline.spawn("capture") if capture == "running" else None
    try:
        # The owner migrates the table; the application writes between the migrations.
        with pipeline.owner() as owner, pipeline.source() as conn:
            conn.execute("INSERT INTO rate_cards VALUES (1, 12.50, 'a', 'old')")
            conn.commit()
            for ddl, change in STEPS:
                if running is not None:
                    wait_for("the capture to take the last change", lambda: _caught_up(pipeline))
                owner.execute(ddl)
                owner.commit()
                conn.execute(f"UPDATE rate_cards SET {change} WHERE id = 1")
                conn.commit()
        if running is not None:
            wait_for("the capture to take the last change", lambda: _caught_up(pipeline))
    finally:
        if running is not None:
            running.terminate()
            running.wait(timeout=30)
    pipeline.flow()

    rows = pipeline.warehouse(
        "SELECT action, before, after FROM audit.row_changes WHERE table_name = 'rate_cards' "
        "ORDER BY commit_lsn, sequence"
    )
    assert rows == EXPECTED
