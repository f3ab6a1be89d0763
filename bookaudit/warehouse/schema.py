"""Creates or upgrades the audit schema in the warehouse database."""

from __future__ import annotations

import psycopg

from bookaudit._resources import list_files, read_text
from bookaudit.errors import TerminalError


def init_warehouse(dsn: str) -> None:
    """Run every sql/warehouse/*.sql in name order, in one transaction; each file is idempotent."""
    try:
        with psycopg.connect(dsn) as conn:
            for name in list_files("sql", "warehouse", suffix=".sql"):
                conn.execute(read_text("sql", "warehouse", name).encode())
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
