"""One way into the warehouse for the read-side commands, with their errors said in one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bookaudit.errors import TerminalError

NOT_INITIALISED = "the warehouse has no audit schema: run `bookaudit warehouse init` first"


@contextmanager
def warehouse(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    try:
        with psycopg.connect(dsn, row_factory=dict_row) as conn:
            yield conn
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
        raise TerminalError(NOT_INITIALISED) from None
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
