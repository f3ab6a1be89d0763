"""Creates or upgrades the audit schema in the warehouse database, with its entity maps."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import psycopg

from bookaudit._resources import list_files, read_text
from bookaudit.entity_map import EntityMap, default_map
from bookaudit.errors import TerminalError
from bookaudit.warehouse.mapping import DEFAULT_SOURCE, apply_map, link_missing


def init_warehouse(
    dsn: str,
    maps: Mapping[str, EntityMap] | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> None:
    """Run every sql/warehouse/*.sql in name order, in one transaction; each file is idempotent.

    The sample schema's map becomes the default ('*') for sources with no map of their own;
    `maps` gives sources their own (source name → map)."""
    try:
        with psycopg.connect(dsn) as conn:
            for name in list_files("sql", "warehouse", suffix=".sql"):
                try:
                    conn.execute(read_text("sql", "warehouse", name).encode())
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise TerminalError(
                        f"warehouse init: {name}: {exc.diag.message_primary} "
                        "(the role needs CREATE on the database and ownership of schema audit)"
                    ) from None
                except psycopg.DatabaseError as exc:
                    raise TerminalError(
                        f"warehouse init: {name} failed: {exc.diag.message_primary}"
                    ) from None
            apply_map(conn, DEFAULT_SOURCE, default_map(), progress)
            for source, entity_map in (maps or {}).items():
                apply_map(conn, source, entity_map, progress)
            link_missing(conn, progress)
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
