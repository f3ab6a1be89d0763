"""The alert on the wire: alert.avsc, its topic, and the key order every JSON output keeps."""

from __future__ import annotations

import json
from typing import Any

import fastavro

from bookaudit._resources import read_text
from bookaudit.kafka.serde import decode, encode

ALERT_SCHEMA = fastavro.parse_schema(json.loads(read_text("schemas", "alert.avsc")))
ALERT_SCHEMA_ID = b"bookaudit.Alert/1"


def alerts_topic(prefix: str) -> str:
    return f"{prefix}.alerts"


def encode_alert(document: dict[str, Any]) -> bytes:
    return encode(ALERT_SCHEMA, document)


def decode_alert(data: bytes) -> dict[str, Any]:
    return decode(ALERT_SCHEMA, data)


# The order of alert.avsc, which JSON outputs keep (jsonb storage sorts keys its own way).
DOCUMENT_KEYS = (
    "alert_id",
    "rule",
    "kind",
    "severity",
    "message",
    "booking_id",
    "table",
    "changes",
    "old_price",
    "new_price",
    "change_pct",
    "actor",
    "actor_id",
    "actor_role",
    "actor_origin",
    "approval_ref",
    "reason",
    "application",
    "db_user",
    "txid",
    "committed_at_ms",
    "committed_at",
    "audit_entry",
    "recorded_at_ms",
)
_CHANGE_KEYS = ("field", "old", "new")
_ENTRY_KEYS = ("source", "commit_lsn", "sequence", "kafka_topic", "kafka_partition", "kafka_offset")


def in_schema_order(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its keys (and nested keys) in alert.avsc order; unknown keys last."""

    def ordered(raw: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: raw[k] for k in keys if k in raw} | raw

    doc = ordered(document, DOCUMENT_KEYS)
    if isinstance(doc.get("changes"), list):
        doc["changes"] = [ordered(c, _CHANGE_KEYS) for c in doc["changes"]]
    if isinstance(doc.get("audit_entry"), dict):
        doc["audit_entry"] = ordered(doc["audit_entry"], _ENTRY_KEYS)
    return doc
