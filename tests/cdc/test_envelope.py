"""The Debezium-shaped envelope and key round-trip through fastavro and the serde pair with exact
values; the deserializer checks the schema header and refuses what the schema cannot."""

from __future__ import annotations

from dataclasses import replace

import pytest
from confluent_kafka.serialization import MessageField, SerializationContext

from bookaudit.errors import DecodeError
from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA,
    KEY_SCHEMA,
    SCHEMA_HEADER,
    EnvelopeDeserializer,
    EnvelopeSerializer,
    Header,
    KafkaRecord,
    KeyDeserializer,
    KeySerializer,
    decode,
    envelope_record,
    to_kafka,
)
from bookaudit.model import (
    Column,
    EnvelopeTransaction,
    SourceInfo,
)
from tests.cdc.fixtures import change


def test_envelope_round_trips_through_fastavro() -> None:
    record = to_kafka(change(), SourceInfo("bookings", "bookingsdb"), "ba", now_ms=5)
    assert record.topic == "ba.public.booking_lines"
    decoded = decode(ENVELOPE_SCHEMA, record.value)
    assert decoded == envelope_record(change(), SourceInfo("bookings", "bookingsdb"), now_ms=5)
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


def _context(record: KafkaRecord) -> SerializationContext:
    return SerializationContext(record.topic, MessageField.VALUE, list(record.headers))


def test_serializer_and_deserializer_round_trip_a_typed_envelope() -> None:
    source = SourceInfo("bookings", "bookingsdb")
    value = EnvelopeSerializer(source, clock=lambda: 5)(change())
    record = to_kafka(change(), source, "ba", now_ms=5)
    assert value == record.value
    env = EnvelopeDeserializer()(value, _context(record))
    assert env.before == change().before and env.after == change().after
    assert env.op == "u" and env.ts_ms == 5
    src = env.source
    assert (src.name, src.db, src.schema, src.table, src.mode) == (
        "bookings", "bookingsdb", "public", "booking_lines", "logical",
    )  # fmt: skip
    assert (src.txid, src.commit_position, src.position, src.sequence, src.ts_ms) == (
        901, 0x1_0000_0000, 0xFFFF_FF00, 4, 1_795_000_000_123,
    )  # fmt: skip
    assert env.transaction == EnvelopeTransaction(f"901:{0x1_0000_0000}", 5, 2)
    assert env.actor == change().actor
    assert [c.name for c in env.columns if c.key] == ["booking_id", "line_no"]
    assert env.columns[2] == Column("price", "numeric(12,2)", False)
    assert env.unchanged_toast == ()
    assert KeyDeserializer()(record.key) == {"booking_id": "7", "line_no": "2"}


def test_deserializer_checks_the_schema_header() -> None:
    record = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=5)
    with pytest.raises(DecodeError, match=r"no bookaudit\.schema header"):
        EnvelopeDeserializer()(record.value, SerializationContext(record.topic, MessageField.VALUE))
    alert = SerializationContext(
        record.topic, MessageField.VALUE, [("trace", b"x"), (SCHEMA_HEADER, b"bookaudit.Alert/1")]
    )
    with pytest.raises(DecodeError, match=r"bookaudit\.Alert/1"):
        EnvelopeDeserializer()(record.value, alert)
    # Other headers are kept around the one it checks; a dict of headers reads the same.
    ours: list[Header] = [("trace", b"x"), *record.headers]
    assert (
        EnvelopeDeserializer()(
            record.value, SerializationContext(record.topic, MessageField.VALUE, ours)
        ).op
        == "u"
    )
    with_dict = SerializationContext(record.topic, MessageField.VALUE, dict(record.headers))
    assert EnvelopeDeserializer()(record.value, with_dict).op == "u"


def test_deserializer_refuses_what_the_schema_cannot() -> None:
    source = SourceInfo("bookings", "db")
    record = to_kafka(replace(change(), op="x"), source, "ba", now_ms=5)
    with pytest.raises(DecodeError, match="unknown op 'x'"):
        EnvelopeDeserializer()(record.value, _context(record))
    with pytest.raises(DecodeError, match="tombstone"):
        EnvelopeDeserializer()(None, _context(record))
    with pytest.raises(DecodeError, match="not a bookaudit Avro record"):
        EnvelopeDeserializer()(b"\x02garbage", _context(record))


def test_trigger_mode_positions_are_commit_numbers() -> None:
    record = to_kafka(change(), SourceInfo("bookings", "db", mode="trigger"), "ba", now_ms=5)
    env = EnvelopeDeserializer()(record.value, _context(record))
    assert env.source.mode == "trigger"
    assert env.source.commit_position == 0x1_0000_0000


def test_key_is_the_real_composite_primary_key_in_order() -> None:
    record = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=0)
    assert record.key is not None
    assert decode(KEY_SCHEMA, record.key) == {
        "columns": [{"name": "booking_id", "value": "7"}, {"name": "line_no", "value": "2"}]
    }
    assert KeySerializer()(change()) == record.key


def test_delete_keys_from_the_old_row_and_truncate_has_no_key() -> None:
    deleted = replace(change("d"), after=None)
    record = to_kafka(deleted, SourceInfo("s", "db"), "ba", now_ms=0)
    assert record.key is not None and decode(KEY_SCHEMA, record.key)["columns"][0]["value"] == "7"
    truncated = replace(deleted, op="t", before=None)
    assert to_kafka(truncated, SourceInfo("s", "db"), "ba", now_ms=0).key is None
    assert KeyDeserializer()(None) is None
