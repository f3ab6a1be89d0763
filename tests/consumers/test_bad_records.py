"""Bad records on the change topics: each becomes a dead letter naming where it was and why, and
the good records around it go on (the bad-input table in the README points here)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bookaudit.consumers.records import Record, decode_and_map
from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA,
    ENVELOPE_SCHEMA_ID,
    SCHEMA_HEADER,
    decode,
    encode,
    to_kafka,
)
from bookaudit.model import SourceInfo
from tests.cdc.fixtures import change

TOPIC = "ba.public.booking_lines"
HEADERS = ((SCHEMA_HEADER, ENVELOPE_SCHEMA_ID),)


def good(op: str = "u") -> tuple[bytes | None, bytes]:
    record = to_kafka(change(op), SourceInfo("bookings", "db"), "ba", now_ms=1)
    return record.key, record.value


def reshaped(**fields: object) -> bytes:
    """A valid Avro envelope with some fields replaced: the right schema, a wrong shape."""
    _, value = good()
    envelope = decode(ENVELOPE_SCHEMA, value)
    return encode(ENVELOPE_SCHEMA, {**envelope, **fields})


def dead_letter_of(key: bytes | None, value: bytes | None) -> str:
    """Map one bad record between two good ones; returns the dead letter's reason."""
    ok_key, ok_value = good()
    records = [
        Record(TOPIC, 0, 1, ok_key, ok_value, HEADERS),
        Record(TOPIC, 0, 2, key, value, HEADERS),
        Record(TOPIC, 0, 3, ok_key, ok_value, HEADERS),
    ]
    entries, dead = decode_and_map(records)
    assert [e.kafka_offset for e in entries] == [1, 3], "the good records must go on"
    assert [d.record for d in dead] == [records[1]], "the bad record is kept whole"
    assert f"{TOPIC}[0]@2" in dead[0].error and "\n" not in dead[0].error
    return dead[0].error


def test_garbage_bytes() -> None:
    assert "not a bookaudit Avro record" in dead_letter_of(b"k", b"\x00\xffgarbage")


def test_truncated_envelope() -> None:
    key, value = good()
    assert "not a bookaudit Avro record" in dead_letter_of(key, value[: len(value) // 2])


def test_tombstone() -> None:
    assert "tombstone" in dead_letter_of(b"k", None)


def test_garbage_key_with_a_valid_value() -> None:
    _, value = good()
    assert "not a bookaudit Avro record" in dead_letter_of(b"\x09\x09\x09", value)


def test_unknown_op() -> None:
    key, _ = good()
    assert "unknown op 'x'" in dead_letter_of(key, reshaped(op="x"))


@pytest.mark.parametrize(
    ("op", "fields", "missing"),
    [
        ("u", {"before": None, "after": None}, "after"),
        ("u", {"after": None}, "after"),
        ("c", {"after": None}, "after"),
        ("d", {"before": None}, "before"),
    ],
)
def test_valid_record_of_impossible_shape(op: str, fields: dict[str, object], missing: str) -> None:
    key, _ = good()
    reason = dead_letter_of(key, reshaped(op=op, **fields))
    assert f"op {op!r} without its {missing!r} row" in reason


def test_cut_short_chunked_event() -> None:
    key, value = good()
    record = Record(
        TOPIC, 0, 2, key, value[:10], HEADERS, error="incomplete chunked event (1 of 3 chunks)"
    )
    entries, dead = decode_and_map([record, replace(record, offset=3, value=value, error=None)])
    assert [d.record.offset for d in dead] == [2] and len(entries) == 1
    assert "incomplete chunked event" in dead[0].error
