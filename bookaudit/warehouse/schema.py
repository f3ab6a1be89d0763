"""Creates or upgrades the audit schema in the warehouse database."""

from __future__ import annotations

from importlib import resources

import psycopg

from bookaudit._resources import read_text
from bookaudit.errors import TerminalError


def warehouse_scripts() -> list[str]:
    """Every sql/warehouse/NNN_*.sql file, in the order their numbers give."""
    folder = resources.files("bookaudit").joinpath("sql", "warehouse")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))


def init_warehouse(dsn: str) -> None:
    try:
        with psycopg.connect(dsn) as conn:
            for name in warehouse_scripts():
                conn.execute(read_text("sql", "warehouse", name).encode())
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
