"""The audit writer's pure core: each entry as the warehouse stores it (COPY lines, field rows)
and its chain leaf. No I/O; `make compile` builds it with mypyc (setup.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bookaudit.chain import ROW_FORM, FieldRow, dump_json
from bookaudit.consumers.records import AuditEntry
from bookaudit.model import Position, format_position

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """One audit row ready to store: its values, its field rows and its chain leaf, and the same
    values as lines of COPY's text format."""

    key: tuple[str, Position, int]
    # The Kafka record it came from (topic, partition, offset): where a refusal points.
    where: tuple[str, int, int]
    change_id: int
    values: tuple[Any, ...]
    fields: tuple[tuple[int, str, int, str | None, str | None], ...]
    leaf: bytes
    # `values` as one line of `COPY audit.row_changes (SCALAR_COLUMNS, JSONB_COLUMNS)`, and
    # `fields` as lines of `COPY audit.field_changes`.
    line: str
    field_lines: str


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One audit.row_changes row as the chain hashes it (and verify reads it back), with its
    field rows."""

    values: tuple[Any, ...]
    fields: tuple[FieldRow, ...]


def stored_row(entry: AuditEntry, change_id: int, recorded_at_us: int) -> StoredRow:
    """Pure: the values of CHAINED_COLUMNS for `entry`, in the chain's types (positions as ints,
    timestamps as epoch microseconds, jsonb as dicts). The reference that `prepare_rows` must
    hash the same as (tests/consumers/audit/test_writer_rows.py)."""
    values = (
        change_id,
        entry.source,
        entry.commit_position,
        entry.sequence,
        entry.position,
        entry.txid,
        entry.committed_at_ms * 1000,
        entry.schema_name,
        entry.table_name,
        entry.action,
        entry.row_key,
        entry.before,
        entry.after,
        # The envelope's actor order, which CHAINED_COLUMNS follows (tests/test_contract.py).
        *entry.actor.to_dict().values(),
        entry.capture_mode,
        entry.kafka_topic,
        entry.kafka_partition,
        entry.kafka_offset,
        recorded_at_us,
    )
    fields = tuple((f.field, n, f.old, f.new) for n, f in enumerate(entry.fields, start=1))
    return StoredRow(values, fields)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str | None) -> str:
    """A text value as COPY's text format spells it: NULL is \\N; backslash, tab, newline and
    carriage return are escaped."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _json_copy_text(value: object, text: str) -> str:
    """`text`, the dump_json of `value`, as COPY's text format spells it (NULL for None)."""
    if value is None:
        return "\\N"
    # dump_json escapes every control character, so of COPY's specials only the backslash is
    # left in its output.
    return text.replace("\\", "\\\\") if "\\" in text else text


class _Times:
    """Timestamps as datetimes and as COPY text, kept per value: a transaction's changes share
    one commit time and a batch one recorded_at."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[datetime, str]] = {}

    def __call__(self, us: int) -> tuple[datetime, str]:
        found = self._seen.get(us)
        if found is None:
            at = _EPOCH + timedelta(microseconds=us)
            found = self._seen[us] = (at, at.isoformat())
        return found


# The function dump_json's encoder escapes strings with (chain.py gives it to c_make_encoder).
_encode_string = json.encoder.encode_basestring


def _json_text(value: str | None) -> str:
    """A string or null as dump_json spells it inside a list."""
    return "null" if value is None else _encode_string(value)


_ROW_FORM_JSON = _json_text(ROW_FORM)


def prepare_rows(
    entries: Sequence[AuditEntry], ids: Sequence[int], recorded_at_us: int
) -> list[PreparedRow]:
    """Pure: each entry as COPY sends it (SCALAR_COLUMNS then JSONB_COLUMNS) and its leaf as the
    chain hashes it, from one JSON encoding of each jsonb value. The writer's hot path: what is
    shared by the batch's rows (texts of names, times, actors) is formatted once, and the
    canonical form's first line, a list of scalars, is written from those texts: the same text
    as dump_json gives (ints as int's repr, strings by the encoder's own escaping function), as
    the tests check against `chain.leaf`."""
    times = _Times()
    recorded_at, recorded_text = times(recorded_at_us)
    # A name's COPY text and JSON text.
    texts: dict[str, tuple[str, str]] = {}
    # By the context's id: the entries hold each one for the whole call, and a transaction's
    # entries share one. Its values in ACTOR_FIELDS' order, as COPY text and as JSON text.
    actors: dict[int, tuple[tuple[str | None, ...], str, str]] = {}
    positions: dict[int, str] = {}
    dump = dump_json
    sha256 = hashlib.sha256
    out: list[PreparedRow] = []
    for change, cid in zip(entries, ids, strict=True):
        source, commit, seq = change.source, change.commit_position, change.sequence
        topic, partition, offset = change.kafka_topic, change.kafka_partition, change.kafka_offset
        schema, table, action, mode = (
            change.schema_name, change.table_name, change.action, change.capture_mode
        )  # fmt: skip
        lsn, txid = change.position, change.txid
        committed_us = change.committed_at_ms * 1000
        committed_at, committed_text = times(committed_us)
        found = actors.get(id(change.actor))
        if found is None:
            ordered = tuple(change.actor.to_dict().values())
            found = actors[id(change.actor)] = (
                ordered,
                "\t".join([copy_text(a) for a in ordered]),
                ",".join([_json_text(a) for a in ordered]),
            )
        actor, actor_text, actor_json = found
        commit_text = positions.get(commit)
        if commit_text is None:
            commit_text = positions[commit] = format_position(commit)
        lsn_text = format_position(lsn)
        names: list[tuple[str, str]] = []
        for name in (source, schema, table, action, mode, topic):
            t = texts.get(name)
            if t is None:
                t = texts[name] = (copy_text(name), _encode_string(name))
            names.append(t)
        fields = tuple(
            (cid, f, n, old, new) for n, (f, old, new) in enumerate(change.fields, start=1)
        )
        key_json, before_json, after_json = (
            dump(change.row_key),
            dump(change.before),
            dump(change.after),
        )
        fields_json = ",".join(
            [
                f"[{_encode_string(f)},{n},{_json_text(old)},{_json_text(new)}]"
                for _, f, n, old, new in fields
            ]
        )
        # dump_json([ROW_FORM, <SCALAR_COLUMNS' values>, <field rows>]), by hand. `int.__repr__`
        # as JSON writes ints: a position is a plain int at run time (NewType).
        head = (
            f"[{_ROW_FORM_JSON},{cid},{names[0][1]},{int.__repr__(commit)},{seq},"
            f"{int.__repr__(lsn)},{txid},{committed_us},{names[1][1]},{names[2][1]},"
            f"{names[3][1]},{actor_json},{names[4][1]},{names[5][1]},{partition},{offset},"
            f"{recorded_at_us},[{fields_json}]]"
        )
        leaf = sha256(f"{head}\n{key_json}\n{before_json}\n{after_json}".encode()).digest()
        line = (
            f"{cid}\t{names[0][0]}\t{commit_text}\t{seq}\t{lsn_text}\t{txid}\t"
            f"{committed_text}\t{names[1][0]}\t{names[2][0]}\t{names[3][0]}\t{actor_text}\t"
            f"{names[4][0]}\t{names[5][0]}\t{partition}\t{offset}\t{recorded_text}\t"
            f"{_json_copy_text(change.row_key, key_json)}\t"
            f"{_json_copy_text(change.before, before_json)}\t"
            f"{_json_copy_text(change.after, after_json)}\n"
        )
        field_lines = "".join(
            [
                f"{cid}\t{copy_text(f)}\t{n}\t{copy_text(old)}\t{copy_text(new)}\n"
                for _, f, n, old, new in fields
            ]
        )
        values = (
            cid, source, commit_text, seq, lsn_text, txid, committed_at, schema, table, action,
            *actor, mode, topic, partition, offset, recorded_at,
            None if change.row_key is None else key_json,
            None if change.before is None else before_json,
            None if change.after is None else after_json,
        )  # fmt: skip
        out.append(
            PreparedRow(
                (source, commit, seq),
                (topic, partition, offset),
                cid,
                values,
                fields,
                leaf,
                line,
                field_lines,
            )
        )
    return out


def prepare_row(entry: AuditEntry, change_id: int, recorded_at_us: int) -> PreparedRow:
    """Pure: one entry prepared as `prepare_rows` prepares it in a batch."""
    return prepare_rows([entry], [change_id], recorded_at_us)[0]
