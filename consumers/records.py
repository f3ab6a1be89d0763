"""What every consumer does to a record: decode the envelope, map it to an audit entry, or
set it aside as a dead letter. Pure: no Kafka client and no database in sight."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from confluent_kafka.serialization import MessageField, SerializationContext

from bookaudit.errors import DecodeError, PoisonMessageError
from bookaudit.kafka._avro_read import ACTOR_FIELDS, read_change, read_key_row
from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA_ID,
    SCHEMA_HEADER,
    EnvelopeDeserializer,
    Headers,
    KeyDeserializer,
)
from bookaudit.model import MODES, ActorContext, CommitSeq, Envelope, Lsn, Position, Row


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka message that processing needs, detached from the client object."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    # Set when the consumer edge already knows the record is unusable (a cut-short chunked
    # event): it is dead-lettered with this reason.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    record: Record
    envelope: Envelope
    key: Row | None


_VALUE = EnvelopeDeserializer()
_KEY = KeyDeserializer()


def decode_record(record: Record) -> Decoded:
    """The typed envelope and key of one record; a record that is not one becomes a poison
    message carrying the record, and nothing else does."""
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if record.error is not None:
        raise PoisonMessageError(f"{where}: {record.error}", record)
    try:
        envelope = _VALUE(
            record.value,
            SerializationContext(record.topic, MessageField.VALUE, list(record.headers)),
        )
        key = _KEY(record.key, SerializationContext(record.topic, MessageField.KEY))
    except DecodeError as exc:
        raise PoisonMessageError(f"{where}: {exc}", record) from None
    return Decoded(record, envelope, key)


# op r is a row as it existed when the audit started (the install's baseline), not an insert.
ACTIONS = {"c": "insert", "r": "existing", "u": "update", "d": "delete", "t": "truncate"}


class FieldChange(NamedTuple):
    field: str
    old: str | None
    new: str | None


class AuditEntry(NamedTuple):
    """One row of audit.row_changes with its audit.field_changes rows: what the typed path maps
    an envelope to, and what the audit writer's fast path (`read_changes`) reads straight from
    the record's bytes, one shape for both. A tuple, not a dataclass: a backlog makes hundreds
    of thousands of them, and a frozen dataclass takes several times as long to build."""

    source: str
    commit_position: Position
    sequence: int
    position: Position
    txid: int
    committed_at_ms: int
    schema_name: str
    table_name: str
    action: str
    row_key: dict[str, str | None] | None
    before: dict[str, str | None] | None
    after: dict[str, str | None] | None
    actor: ActorContext
    capture_mode: str
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    # In column order, as changed_fields gives them.
    fields: tuple[FieldChange, ...]


def changed_fields(
    before: Mapping[str, str | None] | None,
    after: Mapping[str, str | None] | None,
    order: Sequence[str],
) -> tuple[FieldChange, ...]:
    """Insert: every non-null new value. Delete: every non-null old value. Update: what differs."""
    if before is None and after is None:
        return ()
    if before is None:
        assert after is not None
        return tuple(FieldChange(c, None, after[c]) for c in order if after.get(c) is not None)
    if after is None:
        return tuple(FieldChange(c, before[c], None) for c in order if before.get(c) is not None)
    return tuple(
        FieldChange(c, before.get(c), after.get(c)) for c in order if before.get(c) != after.get(c)
    )


def identity(entry: AuditEntry) -> tuple[str, Position, int]:
    """What makes an audit entry unique: (source, commit position, sequence)."""
    return (entry.source, entry.commit_position, entry.sequence)


def distinct_entries(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """The first copy of each event, in identity order.

    The capture is at-least-once, so a batch can hold two copies of one event (a re-send after a
    restart, or the same key on two partitions after partitions were added). The warehouse must
    see each once. Sorting by identity makes every writer take row locks in one order, so two
    writers given overlapping copies wait on each other instead of deadlocking.
    """
    first: dict[tuple[str, Position, int], AuditEntry] = {}
    for entry in entries:
        first.setdefault(identity(entry), entry)
    return sorted(first.values(), key=identity)


def to_audit_entry(decoded: Decoded) -> AuditEntry:
    env = decoded.envelope
    src = env.source
    record = decoded.record
    return AuditEntry(
        source=src.name,
        commit_position=src.commit_position,
        sequence=src.sequence,
        position=src.position,
        txid=src.txid,
        committed_at_ms=src.ts_ms,
        schema_name=src.schema,
        table_name=src.table,
        action=ACTIONS[env.op],
        row_key=decoded.key,
        before=env.before,
        after=env.after,
        actor=env.actor,
        capture_mode=src.mode,
        kafka_topic=record.topic,
        kafka_partition=record.partition,
        kafka_offset=record.offset,
        fields=changed_fields(env.before, env.after, env.column_order),
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    error: str


def decode_and_map(records: Sequence[Record]) -> tuple[list[AuditEntry], list[DeadLetter]]:
    """Pure: a record that does not decode becomes a dead letter value, never an exception out
    of the batch. Mapping a decoded envelope has no such escape: a failure there is a bug in
    bookaudit, and it stops the consumer before any offset moves rather than setting records
    aside."""
    entries: list[AuditEntry] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            decoded = decode_record(record)
        except PoisonMessageError as exc:
            dead.append(DeadLetter(record, str(exc)))
            continue
        entries.append(to_audit_entry(decoded))
    return entries, dead


# --- the audit writer's hot path ----------------------------------------------------------------


# FieldChange(c, b, a) runs NamedTuple's __new__, a Python function; these build the same values
# in C, in about half the time, for each change of a backlog and each of its changed fields.
_field: Callable[[tuple[str, str | None, str | None]], FieldChange] = functools.partial(
    tuple.__new__, FieldChange
)
_entry: Callable[[tuple[object, ...]], AuditEntry] = functools.partial(tuple.__new__, AuditEntry)
_REQUIRED = {"c": 1, "r": 1, "u": 1, "d": 0}  # which image the op needs: 0 before, 1 after


def _fast_change(
    record: Record, actors: dict[tuple[str | None, ...], ActorContext]
) -> AuditEntry | None:
    """The record's entry if it is a well-formed event; None for anything else (no or another
    schema header, bytes that do not read, a value the typed path refuses), which the typed
    path then decodes or dead-letters in its own words."""
    value = record.value
    if value is None or record.error is not None:
        return None
    schema = None
    for header, header_value in record.headers:
        if header == SCHEMA_HEADER:
            schema = header_value
    if schema != ENVELOPE_SCHEMA_ID:
        return None
    try:
        before, after, name, schema, table, txid, lsn, commit, seq, ts, mode, op, actor, order = (
            read_change(value)
        )
        key = record.key
        row_key: Row | None = None
        if key is not None:
            row_key = read_key_row(key)
    except (IndexError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    action = ACTIONS.get(op)
    image = _REQUIRED.get(op)
    if (
        action is None
        or mode not in MODES
        or (image is not None and (before, after)[image] is None)
    ):
        return None
    if before is None or after is None:
        diff = changed_fields(before, after, order or list((after or before or {}).keys()))
    else:
        if not order:
            order = tuple(after)
        get_b, get_a = before.get, after.get
        diff = tuple(FieldChange(c, b, a) for c in order if (b := get_b(c)) != (a := get_a(c)))
    # One ActorContext per actor in the batch: a transaction's changes share theirs.
    context = actors.get(actor)
    if context is None:
        context = actors[actor] = ActorContext.from_dict(
            dict(zip(ACTOR_FIELDS, actor, strict=True))
        )
    # A position's kind follows the capture mode, as the typed Envelope has it.
    kind = CommitSeq if mode == "trigger" else Lsn
    return _entry((
        name, kind(commit), seq, kind(lsn), txid, ts, schema, table, action, row_key, before,
        after, context, mode, record.topic, record.partition, record.offset, diff,
    ))  # fmt: skip


def read_changes(records: Sequence[Record]) -> tuple[list[AuditEntry], list[DeadLetter]]:
    """decode_and_map for the audit writer, without the typed envelope in between: the same
    entries and the same dead letters. A record the fast reader does not take goes the typed
    way, so every refusal reads as decode_and_map words it."""
    entries: list[AuditEntry] = []
    dead: list[DeadLetter] = []
    actors: dict[tuple[str | None, ...], ActorContext] = {}
    for record in records:
        entry = _fast_change(record, actors)
        if entry is None:
            try:
                decoded = decode_record(record)
            except PoisonMessageError as exc:
                dead.append(DeadLetter(record, str(exc)))
                continue
            entry = to_audit_entry(decoded)
        entries.append(entry)
    return entries, dead
