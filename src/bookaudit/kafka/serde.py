"""The envelope on the wire: its Avro schemas, one serializer from RowChange and one deserializer
to a typed Envelope, in confluent-kafka's Serializer(obj, ctx) / Deserializer(data, ctx) shape."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
from confluent_kafka.serialization import Deserializer, SerializationContext, Serializer

from bookaudit import __version__
from bookaudit._resources import read_text
from bookaudit.errors import DecodeError
from bookaudit.kafka._avro_fast import EnvelopeWriter, check_schema_shape
from bookaudit.kafka._avro_read import read_envelope, read_key
from bookaudit.model import (
    MODES,
    OPS,
    ActorContext,
    Column,
    CommitSeq,
    Envelope,
    EnvelopeSource,
    EnvelopeTransaction,
    Lsn,
    Position,
    Row,
    RowChange,
    SourceInfo,
)

SCHEMA_HEADER = "bookaudit.schema"
ENVELOPE_SCHEMA_ID = b"bookaudit.Envelope/1"
# The source name and the identity of the database behind it, readable without decoding the
# value: the audit writer checks them per batch before it decodes anything.
SOURCE_HEADER = "bookaudit.source"
SOURCE_ID_HEADER = "bookaudit.source-id"
# The Avro names the typed Envelope spells its own way; every other field keeps its Avro name.
SOURCE_NAMES = {"txId": "txid", "lsn": "position", "commit_lsn": "commit_position"}

# Kafka record headers as confluent-kafka gives them: (name, value) pairs, names may repeat.
Header = tuple[str, str | bytes | None]
Headers = tuple[Header, ...]


def _load(name: str) -> Any:
    return fastavro.parse_schema(json.loads(read_text("schemas", name)))


ENVELOPE_SCHEMA = _load("envelope.avsc")
KEY_SCHEMA = _load("key.avsc")
check_schema_shape(ENVELOPE_SCHEMA, KEY_SCHEMA)
_WRITER = EnvelopeWriter()


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


# Kafka topic names allow [A-Za-z0-9._-]; a dot also separates prefix, schema and table.
_NOT_IN_TOPIC = re.compile(r"[^A-Za-z0-9_-]")
_MAX_TOPIC = 249


def topic_part(name: str) -> str:
    """A schema or table name as a topic segment: every character Kafka refuses (and the dot)
    becomes `_`, as Debezium's topic naming does. `my table` and `my_table` share a topic; the
    events still name their own table in `source`."""
    return _NOT_IN_TOPIC.sub("_", name) or "_"


@functools.lru_cache(maxsize=4096)
def topic_for(prefix: str, schema: str, table: str) -> str:
    topic = f"{prefix}.{topic_part(schema)}.{topic_part(table)}"
    if len(topic) <= _MAX_TOPIC:
        return topic
    # Over Kafka's limit: keep the start readable and make the end unique.
    digest = hashlib.sha256(topic.encode()).hexdigest()[:12]
    return topic[: _MAX_TOPIC - 13] + "_" + digest


def encode(schema: Any, record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def decode(schema: Any, data: bytes) -> dict[str, Any]:
    try:
        result = fastavro.schemaless_reader(io.BytesIO(data), schema, None)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError, TypeError) as exc:
        raise DecodeError(f"not a bookaudit Avro record: {exc}", data) from None
    if not isinstance(result, dict):
        raise DecodeError("Avro record did not decode to a record", data)
    return result


def decode_envelope(data: bytes) -> dict[str, Any]:
    """decode(ENVELOPE_SCHEMA, data) by the fast reader: the same record, in about half the time."""
    try:
        return read_envelope(data)
    except (IndexError, ValueError) as exc:
        raise DecodeError(f"not a bookaudit Avro record: {exc}", data) from None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EnvelopeSerializer(Serializer):
    """RowChange → envelope bytes, through the fast writer (fastavro's bytes exactly)."""

    def __init__(self, source: SourceInfo, clock: Callable[[], int] = _now_ms) -> None:
        self._source = source
        self._clock = clock

    def __call__(self, obj: RowChange, ctx: SerializationContext | None = None) -> bytes:
        return _WRITER.envelope(obj, self._source, self._clock())


class KeySerializer(Serializer):
    """RowChange → the Avro key of its real primary key; None for a truncate."""

    def __call__(self, obj: RowChange, ctx: SerializationContext | None = None) -> bytes | None:
        return _WRITER.key(obj)


def to_kafka(change: RowChange, source: SourceInfo, prefix: str, now_ms: int) -> KafkaRecord:
    """The one record a change becomes: topic, key, envelope and the schema header."""
    table = change.table
    return KafkaRecord(
        topic=topic_for(prefix, table.schema, table.name),
        key=_WRITER.key(change),
        value=_WRITER.envelope(change, source, now_ms),
        headers=record_headers(source),
    )


@functools.lru_cache(maxsize=64)
def record_headers(source: SourceInfo) -> tuple[tuple[str, bytes], ...]:
    """The headers every change record carries: its schema, and its source when it is known."""
    if not source.identity:
        return ((SCHEMA_HEADER, ENVELOPE_SCHEMA_ID),)
    return (
        (SCHEMA_HEADER, ENVELOPE_SCHEMA_ID),
        (SOURCE_HEADER, source.name.encode()),
        (SOURCE_ID_HEADER, source.identity.encode()),
    )


def check_header(
    headers: Mapping[str, str | bytes | None] | Sequence[Header] | None, expected: bytes
) -> None:
    """Refuse a record that does not say it holds `expected` (another schema, or not ours)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    found = [v for k, v in pairs if k == SCHEMA_HEADER]
    if not found:
        raise DecodeError(f"no {SCHEMA_HEADER} header: not a record bookaudit wrote")
    if found[-1] != expected:
        raise DecodeError(
            f"{SCHEMA_HEADER} header is {found[-1]!r}, this reader understands {expected!r}"
        )


class EnvelopeDeserializer(Deserializer):
    """Envelope bytes → a typed Envelope, after checking the record's schema header.

    Every failure is a DecodeError naming what is wrong with the record; a record that passes
    has every field a consumer reads, so mapping it cannot fail on its shape."""

    def __call__(self, value: bytes | None, ctx: SerializationContext | None = None) -> Envelope:
        if value is None:
            raise DecodeError("empty value (tombstone) is not a bookaudit event")
        check_header(None if ctx is None else ctx.headers, ENVELOPE_SCHEMA_ID)
        return envelope_from_record(decode_envelope(value), value)


def decode_key(data: bytes) -> dict[str, Any]:
    """decode(KEY_SCHEMA, data) by the fast reader."""
    try:
        return read_key(data)
    except (IndexError, ValueError) as exc:
        raise DecodeError(f"not a bookaudit Avro record (key): {exc}", data) from None


class KeyDeserializer(Deserializer):
    """Key bytes → the row's primary key as {column: value}, in key order; None stays None."""

    def __call__(self, value: bytes | None, ctx: SerializationContext | None = None) -> Row | None:
        if value is None:
            return None
        return {c["name"]: c["value"] for c in decode_key(value)["columns"]}


_REQUIRED_IMAGE = {"c": "after", "r": "after", "u": "after", "d": "before"}


def _position(value: int, mode: str) -> Position:
    return CommitSeq(value) if mode == "trigger" else Lsn(value)


def envelope_from_record(raw: Mapping[str, Any], data: bytes | None = None) -> Envelope:
    """The typed Envelope of a record fastavro read; refuses values the schema cannot rule out."""
    src = raw["source"]
    op = raw["op"]
    if op not in OPS:
        raise DecodeError(f"unknown op {op!r}", data)
    # A well-formed record of impossible shape is not history: an insert or update always has
    # its new row, a delete its old one (pgoutput and the outbox both send them).
    image = _REQUIRED_IMAGE.get(op)
    if image is not None and raw[image] is None:
        raise DecodeError(
            f"op {op!r} without its {image!r} row is not a change bookaudit sends", data
        )
    if src["mode"] not in MODES:
        raise DecodeError(f"unknown capture mode {src['mode']!r}", data)
    txn = raw["transaction"]
    names = {avro: SOURCE_NAMES.get(avro, avro) for avro in src}
    fields = {names[k]: v for k, v in src.items()}
    fields["position"] = _position(fields["position"], src["mode"])
    fields["commit_position"] = _position(fields["commit_position"], src["mode"])
    return Envelope(
        before=raw["before"],
        after=raw["after"],
        source=EnvelopeSource(**fields),
        op=raw["op"],
        ts_ms=raw["ts_ms"],
        transaction=None if txn is None else EnvelopeTransaction(**txn),
        actor=ActorContext(**raw["actor"]),
        columns=tuple(Column(**c) for c in raw["columns"]),
        unchanged_toast=tuple(raw["unchanged_toast"]),
    )


def envelope_record(change: RowChange, source: SourceInfo, now_ms: int) -> dict[str, Any]:
    """The envelope as a plain record, for fastavro: the reference the fast writer must match
    byte for byte (and the fast reader must return), and what a generic Avro tool would write
    for this change."""
    table = change.table
    key_set = set(table.key)
    return {
        "before": change.before,
        "after": change.after,
        "source": {
            "version": __version__,
            "connector": "bookaudit",
            "name": source.name,
            "db": source.db,
            "schema": table.schema,
            "table": table.name,
            "txId": change.xid,
            "lsn": change.position,
            "commit_lsn": change.commit_position,
            "sequence": change.sequence,
            "ts_ms": change.commit_unix_ms,
            "snapshot": change.snapshot,
            "mode": source.mode,
        },
        "op": change.op,
        "ts_ms": now_ms,
        "transaction": {
            "id": f"{change.xid}:{change.commit_position}",
            "total_order": change.sequence + 1,
            "data_collection_order": change.data_collection_order + 1,
        },
        "actor": change.actor.to_dict(),
        "columns": [
            {"name": c, "type": t, "key": c in key_set}
            for c, t in zip(table.columns, table.types, strict=True)
        ],
        "unchanged_toast": list(change.unchanged_toast),
    }


def key_record(change: RowChange) -> dict[str, Any] | None:
    """The key as a plain record, for fastavro (the fast writer's reference)."""
    row = change.after if change.after is not None else change.before
    if row is None:
        return None
    return {"columns": [{"name": c, "value": row.get(c)} for c in change.table.key]}
