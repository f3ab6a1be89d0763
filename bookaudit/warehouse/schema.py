"""Creates or upgrades the audit schema in the warehouse database."""

from __future__ import annotations

import psycopg

from bookaudit._resources import read_text
from bookaudit.errors import TerminalError


def init_warehouse(dsn: str) -> None:
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(read_text("sql", "warehouse", "001_audit.sql").encode())
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
