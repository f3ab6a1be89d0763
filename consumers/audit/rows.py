"""The audit writer's pure core: each entry as the warehouse stores it (COPY lines, field rows)
and its chain leaf. No I/O; `make compile` builds it with mypyc (setup.py)."""

from __future__ import annotations

import hashlib
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


def prepare_rows(
    entries: Sequence[AuditEntry], ids: Sequence[int], recorded_at_us: int
) -> list[PreparedRow]:
    """Pure: each entry as COPY sends it (SCALAR_COLUMNS then JSONB_COLUMNS) and its leaf as the
    chain hashes it, from one JSON encoding of each jsonb value. The writer's hot path: what is
    shared by the batch's rows (texts of names, times, actors) is formatted once."""
    times = _Times()
    recorded_at, recorded_text = times(recorded_at_us)
    texts: dict[str, str] = {}
    # By the context's id: the entries hold each one for the whole call, and a transaction's
    # entries share one.
    actors: dict[int, tuple[tuple[str | None, ...], str]] = {}
    positions: dict[int, str] = {}
    dump = dump_json
    sha256 = hashlib.sha256
    out: list[PreparedRow] = []
    for change, cid in zip(entries, ids, strict=True):
        source, commit, seq = change.source, change.commit_position, change.sequence
        topic, partition, offset = change.kafka_topic, change.kafka_partition, change.kafka_offset
        lsn = change.position
        committed_us = change.committed_at_ms * 1000
        committed_at, committed_text = times(committed_us)
        found = actors.get(id(change.actor))
        if found is None:
            ordered = tuple(change.actor.to_dict().values())  # ACTOR_FIELDS' order
            found = actors[id(change.actor)] = (ordered, "\t".join(copy_text(a) for a in ordered))
        actor, actor_text = found
        commit_text = positions.get(commit)
        if commit_text is None:
            commit_text = positions[commit] = format_position(commit)
        lsn_text = format_position(lsn)
        fields = tuple(
            (cid, f, n, old, new) for n, (f, old, new) in enumerate(change.fields, start=1)
        )
        key_json, before_json, after_json = (
            dump(change.row_key),
            dump(change.before),
            dump(change.after),
        )
        head = dump(
            [ROW_FORM, cid, source, commit, seq, lsn, change.txid, committed_us,
             change.schema_name, change.table_name, change.action, *actor, change.capture_mode,
             topic, partition, offset, recorded_at_us, [f[1:] for f in fields]]
        )  # fmt: skip
        leaf = sha256("\n".join((head, key_json, before_json, after_json)).encode()).digest()
        names = []
        for name in (source, change.schema_name, change.table_name, change.capture_mode, topic):
            t = texts.get(name)
            if t is None:
                t = texts[name] = copy_text(name)
            names.append(t)
        line = (
            f"{cid}\t{names[0]}\t{commit_text}\t{seq}\t{lsn_text}\t{change.txid}\t"
            f"{committed_text}\t{names[1]}\t{names[2]}\t{change.action}\t{actor_text}\t"
            f"{names[3]}\t{names[4]}\t{partition}\t{offset}\t{recorded_text}\t"
            f"{_json_copy_text(change.row_key, key_json)}\t"
            f"{_json_copy_text(change.before, before_json)}\t"
            f"{_json_copy_text(change.after, after_json)}\n"
        )
        field_lines = "".join(
            f"{cid}\t{copy_text(f)}\t{n}\t{copy_text(old)}\t{copy_text(new)}\n"
            for _, f, n, old, new in fields
        )
        values = (
            cid, source, commit_text, seq, lsn_text, change.txid, committed_at,
            change.schema_name, change.table_name, change.action, *actor, change.capture_mode,
            topic, partition, offset, recorded_at,
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
