"""What every consumer does to a record: decode the envelope, map it to an audit entry, or
set it aside as a dead letter. Pure: no Kafka client and no database in sight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bookaudit.errors import DecodeError, PoisonMessageError
from bookaudit.kafka.serde import ENVELOPE_SCHEMA, KEY_SCHEMA, decode
from bookaudit.model import Position


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka message that processing needs, detached from the client object."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # Set when the consumer edge already knows the record is unusable (a cut-short chunked
    # event): it is dead-lettered with this reason.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    record: Record
    envelope: dict[str, Any]
    key: dict[str, Any] | None


def decode_record(record: Record) -> Decoded:
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if record.error is not None:
        raise PoisonMessageError(f"{where}: {record.error}", record)
    if record.value is None:
        raise PoisonMessageError(
            f"{where}: empty value (tombstone) is not a bookaudit event", record
        )
    try:
        envelope = decode(ENVELOPE_SCHEMA, record.value)
        key = None if record.key is None else decode(KEY_SCHEMA, record.key)
    except DecodeError as exc:
        raise PoisonMessageError(f"{where}: {exc}", record) from None
    if envelope.get("op") not in ("c", "u", "d", "t", "r"):
        raise PoisonMessageError(f"{where}: unknown op {envelope.get('op')!r}", record)
    return Decoded(record, envelope, key)


ACTIONS = {"c": "insert", "r": "insert", "u": "update", "d": "delete", "t": "truncate"}


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
    actor: dict[str, str | None]
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
    src = env["source"]
    before = env.get("before")
    after = env.get("after")
    columns: list[dict[str, Any]] = env.get("columns") or []
    order = [c["name"] for c in columns] or list((after or before or {}).keys())
    key = decoded.key
    row_key = None if key is None else {c["name"]: c["value"] for c in key["columns"]}
    record = decoded.record
    return AuditEntry(
        source=src["name"],
        commit_position=src["commit_lsn"],
        sequence=src["sequence"],
        position=src["lsn"],
        txid=src["txId"],
        committed_at_ms=src["ts_ms"],
        schema_name=src["schema"],
        table_name=src["table"],
        action=ACTIONS[env["op"]],
        row_key=row_key,
        before=before,
        after=after,
        actor=dict(env["actor"]),
        capture_mode=src.get("mode", "logical"),
        kafka_topic=record.topic,
        kafka_partition=record.partition,
        kafka_offset=record.offset,
        fields=changed_fields(before, after, order),
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    error: str


def decode_and_map(records: list[Record]) -> tuple[list[AuditEntry], list[DeadLetter]]:
    """Pure: a bad record becomes a dead letter value, never an exception out of the batch."""
    entries: list[AuditEntry] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            entries.append(to_audit_entry(decode_record(record)))
        except PoisonMessageError as exc:
            dead.append(DeadLetter(record, str(exc)))
        except (KeyError, TypeError, ValueError) as exc:
            dead.append(DeadLetter(record, f"cannot map envelope: {type(exc).__name__}: {exc}"))
    return entries, dead
