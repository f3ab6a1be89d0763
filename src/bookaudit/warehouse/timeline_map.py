"""The sample schema's names the timeline reads, in the one place the entity map will replace."""

from __future__ import annotations

import json
from typing import Any

import psycopg

# Which table holds bookings and customers, how each related table reaches a booking, which
# fields mean what, and which are noise. The warehouse views read this from audit.entity_map.
SAMPLE_MAP: dict[str, Any] = {
    "booking": {
        "table": "bookings",
        "key": "id",
        "customer_column": "customer_id",
        "schedule": ["scheduled_start", "scheduled_end"],
        "price": ["price"],
        "status": ["status"],
        "assignment": [],
        "cancel_values": ["cancelled", "canceled"],
    },
    "customer": {"table": "customers", "key": "id"},
    "related": [
        {
            "table": "assignments",
            "booking_column": "booking_id",
            "kind": "assignment",
            "assignment": ["fieldworker"],
        },
        {"table": "notes", "booking_column": "booking_id", "kind": "note"},
        {
            "table": "invoices",
            "booking_column": "booking_id",
            "kind": "invoice",
            "sent": ["sent_at"],
            "status": ["status"],
            "amount": ["amount"],
        },
        {
            "table": "payments",
            "booking_column": "booking_id",
            "kind": "payment",
            "amount": ["amount"],
        },
    ],
    "ignore_fields": ["updated_at"],
}


def write_map(conn: psycopg.Connection[Any], entity_map: dict[str, Any] | None = None) -> None:
    """Replace the warehouse's copy of the map, inside the caller's transaction."""
    conn.execute(
        "INSERT INTO audit.entity_map (singleton, map) VALUES (true, %s::jsonb) "
        "ON CONFLICT (singleton) DO UPDATE SET map = EXCLUDED.map, written_at = now()",
        (json.dumps(entity_map or SAMPLE_MAP),),
    )
