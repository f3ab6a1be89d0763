"""The fast envelope reader returns exactly what fastavro reads, and refuses what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from bookaudit.errors import DecodeError
from bookaudit.kafka import _avro_read
from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA,
    KEY_SCHEMA,
    decode,
    decode_envelope,
    decode_key,
    encode,
    envelope_record,
    to_kafka,
)
from bookaudit.model import RowChange
from tests.cdc.fixtures import NOW_MS, SOURCE, captured_changes, variants
from tests.compiled import python_source


def _bytes(change: RowChange) -> bytes:
    return encode(ENVELOPE_SCHEMA, envelope_record(change, SOURCE, NOW_MS))


@pytest.mark.parametrize("index", range(11))
def test_synthetic_envelopes_read_as_fastavro_reads_them(index: int) -> None:
    data = _bytes(variants()[index])
    assert decode_envelope(data) == decode(ENVELOPE_SCHEMA, data)


def test_every_captured_change_reads_as_fastavro_reads_it() -> None:
    for c in captured_changes():
        data = _bytes(c)
        assert decode_envelope(data) == decode(ENVELOPE_SCHEMA, data)


def test_long_values_and_multi_byte_lengths() -> None:
    env = envelope_record(variants()[0], SOURCE, NOW_MS)
    env["after"] = {f"c{i}": "x" * (i * 37) for i in range(70)}  # lengths past one varint byte
    env["source"].update(txId=-(2**63), lsn=2**63 - 1, commit_lsn=300, sequence=-1)
    data = encode(ENVELOPE_SCHEMA, env)
    assert decode_envelope(data) == decode(ENVELOPE_SCHEMA, data)


@pytest.mark.parametrize("cut", [0, 1, 5, 40, -30, -1])
def test_truncated_records_are_refused_by_both(cut: int) -> None:
    data = _bytes(variants()[0])[:cut]
    with pytest.raises(DecodeError):
        decode(ENVELOPE_SCHEMA, data)
    with pytest.raises(DecodeError, match="not a bookaudit Avro record"):
        decode_envelope(data)


def test_a_bad_union_index_is_refused() -> None:
    with pytest.raises(DecodeError, match="bad union index"):
        decode_envelope(b"\x06garbage")


def test_keys_read_as_fastavro_reads_them() -> None:
    keys: list[dict[str, object]] = [
        {"columns": []},
        {"columns": [{"name": "id", "value": "42"}]},
        {"columns": [{"name": "booking_id", "value": "7"}, {"name": "line", "value": None}]},
        {"columns": [{"name": "ünï" * 30, "value": "x" * 300}]},
    ]
    for key in keys:
        data = encode(KEY_SCHEMA, key)
        assert decode_key(data) == decode(KEY_SCHEMA, data) == key
        columns: Any = key["columns"]
        assert _avro_read.read_key_row(data) == {c["name"]: c["value"] for c in columns}
    with pytest.raises(DecodeError, match=r"not a bookaudit Avro record \(key\)"):
        decode_key(encode(KEY_SCHEMA, keys[1])[:-1])


def test_the_imported_reader_reads_as_its_python_source() -> None:
    """After `make compile` the import gives the mypyc build: it must read and refuse exactly as
    the Python source does (without a build, the import is that source)."""
    source = python_source(_avro_read)
    datas = [_bytes(c) for c in [*variants(), *captured_changes()]]
    stale = f"{_avro_read.__file__} reads otherwise than its .py: run `make compile` again"
    for data in datas:
        assert _avro_read.read_envelope(data) == source.read_envelope(data), stale
        assert _avro_read.read_change(data) == source.read_change(data), stale
    keys = [k for c in variants() if (k := to_kafka(c, SOURCE, "p", NOW_MS).key) is not None]
    assert keys
    for key in keys:
        assert _avro_read.read_key_row(key) == source.read_key_row(key), stale
    for cut in (0, 1, 5, 40, -30, -1):
        with pytest.raises((IndexError, ValueError)) as compiled_error:
            _avro_read.read_change(datas[0][:cut])
        with pytest.raises((IndexError, ValueError)) as source_error:
            source.read_change(datas[0][:cut])
        assert compiled_error.type is source_error.type
