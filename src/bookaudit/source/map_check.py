"""Checks an entity map against the source catalog: every table, column and key it names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from bookaudit.entity_map import BOOKING, CUSTOMER, Entity, EntityMap, TableRef
from bookaudit.model import OUTBOX_TRIGGER
from bookaudit.source.install import TRIGGER_NAME


@dataclass(frozen=True)
class TableInfo:
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    audited: bool  # the install's context trigger is on it
    partition_key: tuple[str, ...] = ()  # a partitioned table's partition key columns

    def names_rows(self, key: str) -> bool:
        """Whether `key` names a row: the primary key, or on a partitioned table (whose primary
        key must hold the partition key) the primary key less the partition key."""
        rest = tuple(c for c in self.primary_key if c not in self.partition_key)
        return self.primary_key == (key,) or (bool(self.partition_key) and rest == (key,))


@dataclass(frozen=True)
class Catalog:
    """What the source says about the tables a map names; `installed` is whether
    `source install` has run there at all (otherwise nothing is expected to be audited)."""

    tables: dict[TableRef, TableInfo]
    installed: bool


def section(entity_map: EntityMap, entity: Entity) -> str:
    """Where in bookaudit.toml an entity is written, for error lines."""
    if entity.kind == BOOKING:
        return "[map.booking]"
    if entity.kind == CUSTOMER:
        return "[map.customer]"
    return f"[[map.related]] #{entity_map.related.index(entity) + 1} ({entity.table})"


def _column_keys(entity: Entity) -> Iterable[tuple[str, str]]:
    """(setting, column) for every column the entity names, in the file's terms."""
    if entity.key:
        yield "key", entity.key
    if entity.customer_column:
        yield "customer", entity.customer_column
    if entity.booking_column:
        yield "booking", entity.booking_column
    if entity.through_column:
        yield "via", entity.through_column
    if entity.sent_column:
        yield "sent", entity.sent_column
    yield from entity.fields.items()


def check_map(entity_map: EntityMap, catalog: Catalog) -> list[str]:
    """One line per mistake, in file order; empty when the map fits the source."""
    problems: list[str] = []
    for entity in entity_map.entities:
        where = section(entity_map, entity)
        info = catalog.tables.get(entity.table)
        if info is None:
            problems.append(f"{where}: table {entity.table} does not exist in the source")
            continue
        for setting, column in _column_keys(entity):
            if column not in info.columns:
                problems.append(
                    f"{where}: {setting} column {column!r} is not a column of {entity.table}"
                )
        if catalog.installed and not info.audited:
            problems.append(
                f"{where}: {entity.table} is not audited: add --table {entity.table} "
                "to `bookaudit source install`"
            )
        if entity.key and entity.key in info.columns and not info.names_rows(entity.key):
            pk = ", ".join(info.primary_key) or "none"
            problems.append(
                f"{where}: key {entity.key!r} is not the primary key of {entity.table} "
                f"(primary key: {pk})"
            )
    # Only once some table exists: with none, the missing tables already say it all.
    for name in entity_map.ignore_fields if catalog.tables else ():
        if not any(name in info.columns for info in catalog.tables.values()):
            problems.append(f"[map] ignore_fields: {name!r} is a column of no mapped table")
    return problems


def read_catalog(conn: psycopg.Connection[Any], tables: Iterable[TableRef]) -> Catalog:
    """Columns, primary key and audit trigger of each named table that exists."""
    found: dict[TableRef, TableInfo] = {}
    for table in tables:
        oid = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (table.schema, table.name),
        ).fetchone()
        if oid is None:
            continue
        columns = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (oid[0],),
        ).fetchall()
        key = conn.execute(
            "SELECT a.attname FROM pg_index i "
            "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
            (oid[0],),
        ).fetchall()
        partition_key = conn.execute(
            "SELECT a.attname FROM pg_partitioned_table p "
            "JOIN LATERAL unnest(p.partattrs) k(attnum) ON true "
            "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = k.attnum "
            "WHERE p.partrelid = %s",
            (oid[0],),
        ).fetchall()
        # The context trigger (logical mode) or the outbox trigger (trigger mode).
        audited = conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = %s AND tgname = ANY(%s)",
            (oid[0], [TRIGGER_NAME, OUTBOX_TRIGGER]),
        ).fetchone()
        found[table] = TableInfo(
            tuple(str(c[0]) for c in columns),
            tuple(str(k[0]) for k in key),
            audited is not None,
            tuple(str(k[0]) for k in partition_key),
        )
    installed = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'bookaudit'").fetchone()
    return Catalog(found, installed is not None)
