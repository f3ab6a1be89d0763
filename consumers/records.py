"""What every consumer does to a record: decode the envelope, map it to an audit entry, or
set it aside as a dead letter. Pure: no Kafka client and no database in sight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka.serialization import MessageField, SerializationContext

from bookaudit.errors import DecodeError, PoisonMessageError
from bookaudit.kafka.serde import EnvelopeDeserializer, Headers, KeyDeserializer
from bookaudit.model import ActorContext, Envelope, Position, Row


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
