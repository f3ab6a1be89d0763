"""Pure mapping of a RowChange to its Kafka topic, Avro key and Debezium-shaped Avro envelope."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro

from bookaudit import __version__
from bookaudit._resources import read_text
from bookaudit.errors import DecodeError
from bookaudit.kafka._avro_fast import EnvelopeWriter, check_schema_shape
from bookaudit.model import RowChange

SCHEMA_HEADER = "bookaudit.schema"
ENVELOPE_SCHEMA_ID = b"bookaudit.Envelope/1"


def _load(name: str) -> Any:
    return fastavro.parse_schema(json.loads(read_text("schemas", name)))


ENVELOPE_SCHEMA = _load("envelope.avsc")
KEY_SCHEMA = _load("key.avsc")
check_schema_shape(ENVELOPE_SCHEMA, KEY_SCHEMA)
_WRITER = EnvelopeWriter()


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the envelope's `source` block says about where changes come from."""

    name: str
    db: str
    mode: str = "logical"


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    topic: str
    key: bytes | None
    value: bytes


def topic_for(prefix: str, schema: str, table: str) -> str:
    return f"{prefix}.{schema}.{table}"


def envelope(change: RowChange, source: SourceInfo, now_ms: int) -> dict[str, Any]:
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
            "snapshot": "false",
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


def row_key(change: RowChange) -> dict[str, Any] | None:
    """The real primary key, taken from the new row (or the old one for a delete)."""
    row = change.after if change.after is not None else change.before
    if row is None:
        return None
    return {"columns": [{"name": c, "value": row.get(c)} for c in change.table.key]}


def encode(schema: Any, record: dict[str, Any]) -> bytes:
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


def to_kafka(change: RowChange, source: SourceInfo, prefix: str, now_ms: int) -> KafkaRecord:
    key = row_key(change)
    return KafkaRecord(
        topic=topic_for(prefix, change.table.schema, change.table.name),
        key=None if key is None else _WRITER.key(key),
        value=_WRITER.envelope(envelope(change, source, now_ms)),
    )
