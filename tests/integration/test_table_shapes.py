"""Tables beyond the plain ones: generated columns, and (trigger mode) columns that change while
changes wait in the outbox."""

from __future__ import annotations

from tests.integration.harness import Pipeline

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
