"""Writes a source's entity map into the warehouse tables that the views read."""

from __future__ import annotations

from typing import Any

import psycopg

from bookaudit.entity_map import EntityMap

DEFAULT_SOURCE = "*"  # the map of every source that has none of its own


def apply_map(conn: psycopg.Connection[Any], source: str, entity_map: EntityMap) -> None:
    """Replace `source`'s map, in the caller's transaction: the views answer with it at commit."""
    conn.execute("DELETE FROM audit.entity_maps WHERE source = %s", (source,))
    conn.execute(
        "INSERT INTO audit.entity_maps (source, origin, ignore_fields, cancelled_statuses) "
        "VALUES (%s, %s, %s, %s)",
        (
            source,
            entity_map.origin,
            list(entity_map.ignore_fields),
            list(entity_map.cancelled_statuses),
        ),
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO audit.entity_tables (source, schema_name, table_name, kind, label, "
            "key_column, booking_column, through_schema, through_table, through_column, "
            "customer_column, sent_column) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    source,
                    e.table.schema,
                    e.table.name,
                    e.kind,
                    e.label,
                    e.key,
                    e.booking_column,
                    None if e.through is None else e.through.schema,
                    None if e.through is None else e.through.name,
                    e.through_column,
                    e.customer_column,
                    e.sent_column,
                )
                for e in entity_map.entities
            ],
        )
        fields = [
            (source, e.table.schema, e.table.name, column, role)
            for e in entity_map.entities
            for role, column in e.fields.items()
        ]
        if fields:
            cur.executemany(
                "INSERT INTO audit.entity_fields (source, schema_name, table_name, field, role) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                fields,
            )
    # The timeline's labels read the maps through this snapshot of them (020_views.sql).
    conn.execute("REFRESH MATERIALIZED VIEW audit.label_specs")


def mapped_sources(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("SELECT source FROM audit.entity_maps ORDER BY source").fetchall()
    return [str(r[0]) if isinstance(r, tuple) else str(r["source"]) for r in rows]
