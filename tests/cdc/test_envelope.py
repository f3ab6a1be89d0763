"""The Debezium-shaped envelope and key round-trip through fastavro with exact values."""

from __future__ import annotations

from dataclasses import replace

from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA,
    KEY_SCHEMA,
    SourceInfo,
    decode,
    envelope,
    to_kafka,
)
from bookaudit.model import ActorContext, Lsn, RowChange, TableSchema

TABLE = TableSchema(
    oid=1,
    schema="public",
    name="booking_lines",
    columns=("booking_id", "line_no", "price", "memo"),
    types=("bigint", "integer", "numeric(12,2)", "text"),
    key=("booking_id", "line_no"),
)


def change(op: str = "u") -> RowChange:
    return RowChange(
        table=TABLE,
        op=op,
        before={"booking_id": "7", "line_no": "2", "price": "0.10", "memo": None},
        after={"booking_id": "7", "line_no": "2", "price": "12345678901.23", "memo": "ünïcode"},
        xid=901,
        commit_position=Lsn(0x1_0000_0000),
        position=Lsn(0xFFFF_FF00),
        sequence=4,
        data_collection_order=1,
        commit_unix_ms=1_795_000_000_123,
        actor=ActorContext(origin="application", id="alice", role="admin", approval_ref="APR-1"),
    )


def test_envelope_round_trips_through_fastavro() -> None:
    record = to_kafka(change(), SourceInfo("bookings", "bookingsdb"), "ba", now_ms=5)
    assert record.topic == "ba.public.booking_lines"
    decoded = decode(ENVELOPE_SCHEMA, record.value)
    assert decoded == envelope(change(), SourceInfo("bookings", "bookingsdb"), now_ms=5)
    assert decoded["after"]["price"] == "12345678901.23"
    assert decoded["before"]["price"] == "0.10"
    assert decoded["before"]["memo"] is None
    assert decoded["source"]["commit_lsn"] == 0x1_0000_0000
    assert decoded["source"]["ts_ms"] == 1_795_000_000_123
    assert decoded["actor"]["id"] == "alice"
    assert decoded["transaction"] == {
        "id": f"901:{0x1_0000_0000}",
        "total_order": 5,
        "data_collection_order": 2,
    }
    assert [c["name"] for c in decoded["columns"] if c["key"]] == ["booking_id", "line_no"]


def test_key_is_the_real_composite_primary_key_in_order() -> None:
    record = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=0)
    assert record.key is not None
    assert decode(KEY_SCHEMA, record.key) == {
        "columns": [{"name": "booking_id", "value": "7"}, {"name": "line_no", "value": "2"}]
    }


def test_delete_keys_from_the_old_row_and_truncate_has_no_key() -> None:
    deleted = replace(change("d"), after=None)
    record = to_kafka(deleted, SourceInfo("s", "db"), "ba", now_ms=0)
    assert record.key is not None and decode(KEY_SCHEMA, record.key)["columns"][0]["value"] == "7"
    truncated = replace(deleted, op="t", before=None)
    assert to_kafka(truncated, SourceInfo("s", "db"), "ba", now_ms=0).key is None
