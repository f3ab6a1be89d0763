"""Read-back of recorded alerts for `bookaudit alerts list`, with the audit entry each refers to."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bookaudit.kafka.alert import in_schema_order
from bookaudit.terminal import printable
from bookaudit.warehouse._connect import warehouse
from bookaudit.warehouse.history import render_table, resolve_source

ALERT_KEYS = (
    "committed_at",
    "severity",
    "rule",
    "booking",
    "actor",
    "role",
    "old_price",
    "new_price",
    "change_pct",
    "txid",
    "audit_change",
    "webhook",
)

# audit_change is audit.row_changes.id of the same change, once the audit writer has stored it.
_LIST = """
SELECT a.committed_at, a.severity, a.rule, a.booking_id AS booking, a.actor,
       a.actor_role AS role, a.old_price::text AS old_price, a.new_price::text AS new_price,
       a.change_pct::text AS change_pct, a.txid, r.id AS audit_change, a.message,
       -- A 4xx parks the alert: recorded with that status, never sent again.
       CASE WHEN w.alert IS NULL THEN NULL
            WHEN d.alert IS NULL THEN 'pending'
            WHEN d.http_status >= 400 THEN 'parked ' || d.http_status
            ELSE 'sent' END AS webhook,
       a.document || jsonb_build_object(
           'recorded_at_ms', (extract(epoch FROM a.recorded_at) * 1000)::bigint) AS document
FROM audit.alerts a
LEFT JOIN audit.row_changes r USING (source, commit_lsn, sequence)
LEFT JOIN audit.alert_outbox w ON w.alert = a.id AND w.channel = 'webhook'
LEFT JOIN audit.alert_deliveries d ON d.alert = a.id AND d.channel = 'webhook'
WHERE a.source = %(source)s
  AND (%(since)s::timestamptz IS NULL OR a.committed_at >= %(since)s::timestamptz)
  AND (%(booking)s::text IS NULL OR a.booking_id = %(booking)s::text)
  AND (%(rule)s::text IS NULL OR a.rule = %(rule)s::text)
ORDER BY a.committed_at, a.commit_lsn, a.sequence, a.id
"""


def list_alerts(
    dsn: str,
    since: datetime | None = None,
    booking: str | None = None,
    rule: str | None = None,
    source: str | None = None,
) -> list[dict[str, Any]]:
    with warehouse(dsn) as conn:
        chosen = resolve_source(conn, source)
        params = {"since": since, "booking": booking, "rule": rule, "source": chosen}
        return conn.execute(_LIST, params).fetchall()


def render_alerts_json(rows: Sequence[dict[str, Any]]) -> str:
    """The alert records exactly as the outputs sent them, plus the audit entry's row id and,
    where a webhook was configured, how the webhook took it (sent, pending, parked <status>)."""
    return json.dumps(
        [
            in_schema_order(
                {
                    **r["document"],
                    "audit_change": r["audit_change"],
                    **({"webhook": r["webhook"]} if r["webhook"] is not None else {}),
                }
            )
            for r in rows
        ],
        indent=2,
    )


def render_alerts_table(rows: Sequence[dict[str, Any]]) -> str:
    table = render_table([{k: r[k] for k in ALERT_KEYS} for r in rows])
    messages = [f"  {printable(r['rule'])}: {printable(r['message'])}" for r in rows]
    return table + "\n\n" + "\n".join(messages)
