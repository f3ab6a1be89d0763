"""Read-back queries over the warehouse, and their table and JSON renderings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bookaudit.errors import TerminalError

HISTORY_KEYS = (
    "committed_at",
    "actor",
    "actor_role",
    "action",
    "table",
    "field",
    "old",
    "new",
    "txid",
)

# A booking's own rows plus every audited row that points at it (invoices, payments, ...).
_BOOKING_HISTORY = """
SELECT committed_at, actor, actor_role, action, table_name AS "table", field,
       old_value AS old, new_value AS new, txid
FROM audit.field_history h
WHERE (h.table_name = %(table)s
       AND EXISTS (SELECT 1 FROM jsonb_each_text(h.row_key) kv WHERE kv.value = %(id)s))
   OR h.booking_ref = %(id)s
ORDER BY committed_at, commit_lsn, sequence, position
"""


def booking_history(dsn: str, booking_id: str, table: str = "bookings") -> list[dict[str, Any]]:
    try:
        with psycopg.connect(dsn, row_factory=dict_row) as conn:
            rows = conn.execute(_BOOKING_HISTORY, {"table": table, "id": booking_id}).fetchall()
    except psycopg.errors.UndefinedTable:
        raise TerminalError(
            "the warehouse has no audit schema: run `bookaudit warehouse init`"
        ) from None
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
    return [{k: row[k] for k in HISTORY_KEYS} for row in rows]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def render_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(
        [{k: (_text(v) if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows],
        indent=2,
    )


def render_table(
    rows: Sequence[dict[str, Any]], max_width: int = 40, keys: Sequence[str] = HISTORY_KEYS
) -> str:
    def cell(value: Any) -> str:
        text = _text(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
