"""Sample values the consumer tests share: one audit entry with every kind of value."""

from __future__ import annotations

from bookaudit.consumers.records import AuditEntry, FieldChange
from bookaudit.model import ActorContext, Lsn

ENTRY = AuditEntry(
    source="bookings", commit_position=Lsn(2**40 + 5), sequence=3, position=Lsn(2**40 - 8), txid=901,
    committed_at_ms=1_795_000_000_123, schema_name="public", table_name="bookings",
    action="update", row_key={"id": "7"}, before={"id": "7", "price": "0.10", "memo": None},
    after={"id": "7", "price": "12.50", "memo": "naïve\ttab \\ back"},
    actor=ActorContext("application", id="alice", role="admin", db_user="app"),
    capture_mode="logical", kafka_topic="ba.public.bookings", kafka_partition=2,
    kafka_offset=41,
    fields=(FieldChange("price", "0.10", "12.50"), FieldChange("memo", None, "naïve\ttab \\ back")),
)  # fmt: skip
