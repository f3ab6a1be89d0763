"""Read-back of accepted capture gaps (a lost slot replaced with `capture --accept-gap`): each
gap row came through the pipeline from bookaudit.capture_gaps and sits in the hash chain."""

from __future__ import annotations

from typing import Any

from bookaudit.warehouse._connect import warehouse

_GAPS = """
SELECT source, committed_at, after FROM audit.row_changes
WHERE schema_name = 'bookaudit' AND table_name = 'capture_gaps' AND action = 'insert'
  AND (%(source)s::text IS NULL OR source = %(source)s::text)
ORDER BY committed_at, commit_lsn, sequence
"""


def describe_gap(source: str, gap: dict[str, Any]) -> str:
    """One line: which source and slot, the positions between which changes are missing."""
    since = gap.get("last_confirmed_lsn")
    since_at = gap.get("last_confirmed_at")
    start = f"after {since} (confirmed {since_at})" if since else "since install"
    return (
        f"source {source!r}: changes committed {start} up to {gap.get('resumed_lsn')} are "
        f"missing: {gap.get('reason')}; gap accepted by {gap.get('accepted_by')} at "
        f"{gap.get('accepted_at')}"
    )


def list_gaps(dsn: str, source: str | None = None) -> list[str]:
    with warehouse(dsn) as conn:
        rows = conn.execute(_GAPS, {"source": source}).fetchall()
    return [describe_gap(str(r["source"]), dict(r["after"] or {})) for r in rows]
