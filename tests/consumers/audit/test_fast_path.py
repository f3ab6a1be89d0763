"""The audit writer's fast path (Avro bytes straight to COPY lines and leaves) gives what the typed
path gives from fastavro's reading: the same entries, dead letters, stored values and leaves."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from bookaudit.chain import dump_json, leaf
from bookaudit.consumers.audit import rows
from bookaudit.consumers.audit.rows import copy_text, prepare_row, prepare_rows, stored_row
from bookaudit.consumers.records import (
    AuditEntry,
    Decoded,
    FieldChange,
    Record,
    _fast_change,
    decode_and_map,
    distinct_entries,
    read_changes,
    to_audit_entry,
)
from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA,
    ENVELOPE_SCHEMA_ID,
    KEY_SCHEMA,
    SCHEMA_HEADER,
    check_header,
    decode,
    encode,
    envelope_from_record,
    to_kafka,
)
from bookaudit.model import ActorContext, Lsn, RowChange
from tests.cdc.fixtures import NOW_MS, SOURCE, captured_changes, variants
from tests.compiled import python_source

HEADERS = ((SCHEMA_HEADER, ENVELOPE_SCHEMA_ID),)


def _changes() -> list[RowChange]:
    """Every op, odd values, keys and actors: the fixtures' variants and a captured session."""
    out = [*variants(), *captured_changes()]
    base = variants()[0]
    for op in ("c", "d", "r"):
        out.append(
            replace(
                base,
                op=op,
                before=None if op in "cr" else base.before,
                after=None if op == "d" else base.after,
            )
        )
    odd: dict[str, str | None] = {
        "booking_id": "7",
        "line_no": "2",
        "price": "1\t2\n3\r4\\5",
        "memo": 'q"uo\\te',
    }
    out += [
        replace(base, after=odd),
        replace(base, before=odd, after={**odd, "memo": None}),
        replace(base, actor=ActorContext("application", id="a\tb\\c", reason="line\nbreak")),
        replace(base, actor=ActorContext("application", id="ünï ✓", request_id="r" * 300)),
        replace(base, table=replace(base.table, schema="my schema", name="tab\tle")),
        replace(base, sequence=2**62, position=Lsn(2**63 - 1), commit_position=Lsn(0)),
    ]
    return out


def _records(changes: list[RowChange]) -> list[Record]:
    records = []
    for n, change in enumerate(changes):
        k = to_kafka(change, SOURCE, "ba", NOW_MS + n)
        records.append(Record(k.topic, n % 3, 100 + n, k.key, k.value, k.headers))
    return records


def _reference(record: Record) -> AuditEntry:
    """The typed path with fastavro as the reader: record → Envelope → AuditEntry."""
    assert record.value is not None
    check_header(record.headers, ENVELOPE_SCHEMA_ID)
    envelope = envelope_from_record(decode(ENVELOPE_SCHEMA, record.value), record.value)
    key = None
    if record.key is not None:
        key = {c["name"]: c["value"] for c in decode(KEY_SCHEMA, record.key)["columns"]}
    return to_audit_entry(Decoded(record, envelope, key))


def test_fast_changes_equal_fastavros_typed_path() -> None:
    records = _records(_changes())
    assert all(_fast_change(r, {}) is not None for r in records), "the fast path took them all"
    changes, dead = read_changes(records)
    assert dead == []
    assert changes == [_reference(r) for r in records]
    # The same types too, not only equal values (a tuple equals a FieldChange).
    assert all(type(f) is FieldChange for c in changes for f in c.fields)
    assert all(type(c) is AuditEntry for c in changes)
    # and the typed path the alerts consumer uses agrees too
    entries, _ = decode_and_map(records)
    assert entries == changes
    assert distinct_entries(entries) == distinct_entries(changes)


def test_records_the_fast_reader_leaves_to_the_typed_path_read_the_same() -> None:
    """An extra header, a repeated one: the typed path decides, and the result is the same."""
    record = _records([variants()[0]])[0]
    odd = [
        replace(record, headers=(("trace", b"1"), *HEADERS)),
        replace(record, headers=(*HEADERS, *HEADERS)),
    ]
    changes, dead = read_changes(odd)
    assert dead == []
    assert changes == [_reference(r) for r in odd]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: replace(r, value=None),
        lambda r: replace(r, value=b"\x00\xffgarbage"),
        lambda r: replace(r, value=r.value[: len(r.value) // 2]),
        lambda r: replace(r, key=b"\x09\x09\x09"),
        lambda r: replace(r, headers=()),
        lambda r: replace(r, headers=((SCHEMA_HEADER, b"other/1"),)),
        lambda r: replace(r, error="incomplete chunked event (1 of 3 chunks)"),
        lambda r: replace(r, value=_reshaped(r.value, op="x")),
        lambda r: replace(r, value=_reshaped(r.value, after=None)),
        lambda r: replace(r, value=_reshaped(r.value, op="d", before=None)),
        lambda r: replace(r, value=_reshaped(r.value, source_mode="cdc")),
    ],
)
def test_bad_records_become_the_same_dead_letters(mangle: Any) -> None:
    good = _records([variants()[0]])[0]
    batch = [good, mangle(replace(good, offset=good.offset + 1)), replace(good, offset=102)]
    changes, dead = read_changes(batch)
    entries, typed_dead = decode_and_map(batch)
    assert dead == typed_dead and len(dead) == 1
    assert changes == entries


def _reshaped(value: bytes | None, source_mode: str | None = None, **fields: object) -> bytes:
    assert value is not None
    envelope = decode(ENVELOPE_SCHEMA, value)
    if source_mode is not None:
        envelope["source"]["mode"] = source_mode
    return encode(ENVELOPE_SCHEMA, {**envelope, **fields})


def _copy_line(values: tuple[Any, ...]) -> str:
    """COPY's text format, by its definition, from values as psycopg's write_row takes them."""

    def text(v: Any) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, datetime):
            return v.isoformat()
        s = str(v)
        return (
            s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        )

    return "\t".join(text(v) for v in values) + "\n"


def test_prepared_rows_hash_what_verify_recomputes_and_copy_what_they_store() -> None:
    records = _records(_changes())
    changes = distinct_entries(read_changes(records)[0])
    rows = prepare_rows(changes, range(500, 500 + len(changes)), 1_795_000_000_200_001)
    entries = distinct_entries(decode_and_map(records)[0])
    assert len(rows) == len(entries) == len(changes)
    for row, entry in zip(rows, entries, strict=True):
        stored = stored_row(entry, row.change_id, 1_795_000_000_200_001)
        assert row.leaf == leaf(stored.values, stored.fields)
        assert row.fields == tuple((row.change_id, *f) for f in stored.fields)
        assert row.line == _copy_line(row.values)
        assert row.field_lines == "".join(_copy_line(f) for f in row.fields)
        assert row == prepare_row(entry, row.change_id, 1_795_000_000_200_001)


def test_copy_text_escapes_what_the_format_reserves() -> None:
    assert copy_text(None) == "\\N"
    assert copy_text("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert copy_text("plain ünï") == "plain ünï"


def test_dump_json_is_the_standard_encoding() -> None:
    import json

    values: list[Any] = [
        None, "x", 1, -(2**63), {"b": "1", "a": None, "ü": "\t\\\"\x00"}, [1, "a", None, ("t",)],
        {"k": [{"z": 1, "y": "\u2028"}]},
    ]  # fmt: skip
    for value in values:
        assert dump_json(value) == json.dumps(
            value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
        )


def _fields(row: Any) -> tuple[Any, ...]:
    return tuple(getattr(row, f) for f in rows.PreparedRow.__dataclass_fields__)


def test_the_imported_row_preparer_prepares_as_its_python_source() -> None:
    """After `make compile` the import gives the mypyc build of rows.py: it must prepare rows
    exactly as the Python source does (without a build, the import is that source)."""
    source = python_source(rows)
    stale = f"{rows.__file__} prepares otherwise than its .py: run `make compile` again"
    entries = distinct_entries(read_changes(_records(_changes()))[0])
    ids = range(7, 7 + len(entries))
    compiled_rows = rows.prepare_rows(entries, ids, 1_795_000_000_200_001)
    source_rows = source.prepare_rows(entries, ids, 1_795_000_000_200_001)
    assert [_fields(r) for r in compiled_rows] == [_fields(r) for r in source_rows], stale
    for entry, cid in zip(entries, ids, strict=True):
        compiled, python = rows.stored_row(entry, cid, 5), source.stored_row(entry, cid, 5)
        assert (compiled.values, compiled.fields) == (python.values, python.fields), stale
    for text in (None, "", "plain", "a\tb\nc\rd\\e", "ünï ✓"):
        assert rows.copy_text(text) == source.copy_text(text), stale
    with pytest.raises(ValueError):
        rows.prepare_rows(entries, ids[1:], 0)
    with pytest.raises(ValueError):
        source.prepare_rows(entries, ids[1:], 0)
