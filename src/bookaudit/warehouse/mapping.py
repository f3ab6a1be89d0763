"""Writes a source's entity map into the warehouse tables that the views read, and relinks that
source's row changes to their bookings when the map changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from bookaudit.entity_map import EntityMap

DEFAULT_SOURCE = "*"  # the map of every source that has none of its own

_TABLE_COLUMNS = (
    "schema_name, table_name, kind, label, key_column, booking_column, through_schema, "
    "through_table, through_column, customer_column, sent_column"
)


def _rows(entity_map: EntityMap) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The map as the rows of audit.entity_tables and audit.entity_fields (without source)."""
    tables = [
        (
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
    ]
    fields = sorted(
        {
            (e.table.schema, e.table.name, column, role)
            for e in entity_map.entities
            for role, column in e.fields.items()
        }
    )
    return tables, fields


def _stored(
    conn: psycopg.Connection[Any], source: str
) -> tuple[tuple[Any, ...] | None, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        head = cur.execute(
            "SELECT ignore_fields, cancelled_statuses FROM audit.entity_maps WHERE source = %s",
            (source,),
        ).fetchone()
        tables = cur.execute(
            f"SELECT {_TABLE_COLUMNS} FROM audit.entity_tables WHERE source = %s",
            (source,),
        ).fetchall()
        fields = cur.execute(
            "SELECT schema_name, table_name, field, role FROM audit.entity_fields "
            "WHERE source = %s ORDER BY 1, 2, 3, 4",
            (source,),
        ).fetchall()
    return head, tables, fields


def apply_map(
    conn: psycopg.Connection[Any],
    source: str,
    entity_map: EntityMap,
    progress: Callable[[str], None] = lambda _m: None,
) -> bool:
    """Make `entity_map` the map of `source`, in the caller's transaction. When it differs from
    the stored one, the row changes it reads are linked again; returns whether it differed."""
    tables, fields = _rows(entity_map)
    head = (list(entity_map.ignore_fields), list(entity_map.cancelled_statuses))
    old_head, old_tables, old_fields = _stored(conn, source)
    if (
        old_head is not None
        and tuple(old_head) == head
        and sorted(old_tables, key=repr) == sorted(tables, key=repr)
        and old_fields == fields
    ):
        conn.execute(
            "UPDATE audit.entity_maps SET origin = %s WHERE source = %s",
            (entity_map.origin, source),
        )
        return False
    # The writers' lock: no batch is linked with half of the old map and half of the new.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('bookaudit.audit.chain'))")
    conn.execute("DELETE FROM audit.entity_maps WHERE source = %s", (source,))
    conn.execute(
        "INSERT INTO audit.entity_maps (source, origin, ignore_fields, cancelled_statuses) "
        "VALUES (%s, %s, %s, %s)",
        (source, entity_map.origin, *head),
    )
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO audit.entity_tables (source, {_TABLE_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(source, *t) for t in tables],
        )
        if fields:
            cur.executemany(
                "INSERT INTO audit.entity_fields (source, schema_name, table_name, field, role) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(source, *f) for f in fields],
            )
    # The timeline's labels read the maps through this snapshot of them (020_views.sql).
    conn.execute("REFRESH MATERIALIZED VIEW audit.label_specs")
    for name in _reading_with(conn, source):
        progress(f"linking the row changes of source {name!r} to their bookings")
        conn.execute("SELECT audit.relink(%s)", (name,))
    return True


def _reading_with(conn: psycopg.Connection[Any], source: str) -> list[str]:
    """The sources whose rows are read with `source`'s map: itself, or for the default map
    every source that has none of its own."""
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        rows = cur.execute(
            "SELECT s FROM audit.sources() s WHERE audit.map_of(s) = %s", (source,)
        ).fetchall()
    return [str(r[0]) for r in rows]


def link_missing(conn: psycopg.Connection[Any], progress: Callable[[str], None]) -> None:
    """A warehouse from before the links (rows, but not one link of any kind): link it all."""
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        unlinked = cur.execute(
            "SELECT EXISTS (SELECT FROM audit.row_changes) "
            "AND NOT EXISTS (SELECT FROM audit.mapped_changes) "
            "AND NOT EXISTS (SELECT FROM audit.booking_links) "
            "AND NOT EXISTS (SELECT FROM audit.customer_links) "
            "AND NOT EXISTS (SELECT FROM audit.row_refs)"
        ).fetchone()
        if unlinked is None or not unlinked[0]:
            return
        for (name,) in cur.execute("SELECT s FROM audit.sources() s").fetchall():
            progress(f"linking the row changes of source {name!r} to their bookings")
            cur.execute("SELECT audit.relink(%s)", (name,))
