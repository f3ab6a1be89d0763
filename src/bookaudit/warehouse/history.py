"""Read-back queries over the warehouse views, and their table and JSON renderings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from bookaudit.terminal import printable
from bookaudit.warehouse._connect import warehouse

HISTORY_KEYS = (
    "committed_at", "actor", "actor_role", "action", "table", "field", "old", "new", "txid",
)  # fmt: skip


@dataclass(frozen=True)
class Report:
    """A query over one view and the keys each of its rows has, in print order."""

    keys: tuple[str, ...]
    sql: str


BOOKING = Report(
    HISTORY_KEYS,
    """
    SELECT committed_at, actor, actor_role, action, table_name AS "table", field,
           old_value AS old, new_value AS new, txid
    FROM audit.booking_history WHERE booking_id = %(id)s
    ORDER BY committed_at, commit_lsn, sequence, position
    """,
)

CUSTOMER = Report(
    ("committed_at", "booking", *HISTORY_KEYS[1:]),
    """
    SELECT committed_at, booking_id AS booking, actor, actor_role, action,
           table_name AS "table", field, old_value AS old, new_value AS new, txid
    FROM audit.customer_history WHERE customer_id = %(id)s
    ORDER BY committed_at, commit_lsn, sequence, position
    """,
)

BOOKING_LOG = Report(
    ("committed_at", "booking", "event", "actor", "actor_role", "approval_ref", "fields", "txid"),
    """
    SELECT committed_at, booking_id AS booking, event, actor, actor_role, approval_ref,
           fields, txid
    FROM audit.booking_log WHERE day BETWEEN %(since)s AND %(until)s
    ORDER BY committed_at, commit_lsn, sequence
    """,
)

ACTOR = Report(
    ("committed_at", "actor_role", "action", "table", "row", "field", "old", "new", "txid"),
    """
    SELECT committed_at, actor_role, action, table_name AS "table",
           audit.key_value(row_key) AS "row", field, old_value AS old, new_value AS new, txid
    FROM audit.actor_activity
    WHERE who = %(who)s AND committed_at >= %(since)s
    ORDER BY committed_at, commit_lsn, sequence, position
    """,
)


def run_report(dsn: str, report: Report, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    with warehouse(dsn) as conn:
        rows = conn.execute(report.sql, params).fetchall()
    return [{k: row[k] for k in report.keys} for row in rows]


def booking_history(dsn: str, booking_id: str) -> list[dict[str, Any]]:
    return run_report(dsn, BOOKING, {"id": booking_id})


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def render_json(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(
        [{k: (_text(v) if isinstance(v, date) else v) for k, v in r.items()} for r in rows],
        indent=2,
    )


def render_table(rows: Sequence[Mapping[str, Any]], max_width: int = 40) -> str:
    keys = list(rows[0]) if rows else list(HISTORY_KEYS)

    def cell(value: Any) -> str:
        text = printable(_text(value))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
