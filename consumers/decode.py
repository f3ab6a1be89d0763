"""Pure decoding of one Kafka record into an envelope; a bad record becomes a poison value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bookaudit.cdc.envelope import ENVELOPE_SCHEMA, KEY_SCHEMA, decode
from bookaudit.errors import DecodeError, PoisonMessageError


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
