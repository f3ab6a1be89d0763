"""What every consumer does to a record: decode the envelope, map it to an audit entry, or
set it aside as a dead letter. Pure: no Kafka client and no database in sight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from confluent_kafka.serialization import MessageField, SerializationContext

from bookaudit.errors import DecodeError, PoisonMessageError
from bookaudit.kafka._avro_read import read_change, read_key
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


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of audit.row_changes with its audit.field_changes rows."""

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


class Change(NamedTuple):
    """One event as the audit writer stores it: an AuditEntry's content in flat form, read
    straight from the record's bytes (`read_changes`), without the typed envelope in between.
    A tuple, not a dataclass: a backlog makes hundreds of thousands of them."""

    key: tuple[str, Position, int]  # identity: (source, commit position, sequence)
    where: tuple[str, int, int]  # the Kafka record: topic, partition, offset
    position: Position
    txid: int
    committed_at_ms: int
    schema_name: str
    table_name: str
    action: str
    row_key: Row | None
    before: Row | None
    after: Row | None
    # The envelope's actor record in its schema order (ACTOR_FIELDS), which is the order of
    # the actor columns in CHAINED_COLUMNS (tests/test_contract.py).
    actor: tuple[str | None, ...]
    capture_mode: str
    # (field, old value, new value) in column order, as changed_fields gives them.
    fields: tuple[tuple[str, str | None, str | None], ...]


def change_of(entry: AuditEntry) -> Change:
    """The flat form of a typed entry: what the fast path gives for the same record."""
    return Change(
        identity(entry),
        (entry.kafka_topic, entry.kafka_partition, entry.kafka_offset),
        entry.position,
        entry.txid,
        entry.committed_at_ms,
        entry.schema_name,
        entry.table_name,
        entry.action,
        entry.row_key,
        entry.before,
        entry.after,
        tuple(entry.actor.to_dict().values()),
        entry.capture_mode,
        tuple((f.field, f.old, f.new) for f in entry.fields),
    )


_REQUIRED = {"c": 1, "r": 1, "u": 1, "d": 0}  # which image the op needs: 0 before, 1 after


def _fast_change(record: Record) -> Change | None:
    """The record's Change if it is a well-formed event; None for anything else (no or another
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
            row_key = {c["name"]: c["value"] for c in read_key(key)["columns"]}
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
        fields = changed_fields(before, after, order or list((after or before or {}).keys()))
        diff = tuple((f.field, f.old, f.new) for f in fields)
    else:
        if not order:
            order = tuple(after)
        get_b, get_a = before.get, after.get
        diff = tuple((c, b, a) for c in order if (b := get_b(c)) != (a := get_a(c)))
    # A position's kind follows the capture mode, as the typed Envelope has it.
    kind = CommitSeq if mode == "trigger" else Lsn
    return Change(
        (name, kind(commit), seq), (record.topic, record.partition, record.offset), kind(lsn),
        txid, ts, schema, table, action, row_key, before, after, actor, mode, diff,
    )  # fmt: skip


def read_changes(records: Sequence[Record]) -> tuple[list[Change], list[DeadLetter]]:
    """decode_and_map for the audit writer, to the flat Change: the same entries and the same
    dead letters. A record the fast reader does not take goes the typed way, so every refusal
    reads as decode_and_map words it."""
    changes: list[Change] = []
    dead: list[DeadLetter] = []
    for record in records:
        change = _fast_change(record)
        if change is None:
            try:
                decoded = decode_record(record)
            except PoisonMessageError as exc:
                dead.append(DeadLetter(record, str(exc)))
                continue
            change = change_of(to_audit_entry(decoded))
        changes.append(change)
    return changes, dead


def distinct_changes(changes: Sequence[Change]) -> list[Change]:
    """distinct_entries for Changes: the first copy of each event, in identity order."""
    first: dict[tuple[str, Position, int], Change] = {}
    for change in changes:
        first.setdefault(change.key, change)
    return sorted(first.values(), key=_key)


def _key(change: Change) -> tuple[str, Position, int]:
    return change.key
