"""Creates or upgrades the audit schema in the warehouse database."""

from __future__ import annotations

import psycopg

from bookaudit._resources import list_files, read_text
from bookaudit.errors import TerminalError
from bookaudit.warehouse.timeline_map import write_map


def init_warehouse(dsn: str) -> None:
    """Run every sql/warehouse/*.sql in name order, in one transaction; each file is idempotent."""
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
            write_map(conn)
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
