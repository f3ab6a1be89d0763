"""One source for every field list: the .avsc files. The dataclasses, the fast writer, the
audit writer's row, the warehouse DDL and the source's context JSON are all derived from them
here, so a field added, renamed or moved in one place and not the others fails this test."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from bookaudit._resources import read_text
from bookaudit.chain import CHAINED_COLUMNS
from bookaudit.consumers.alerts.model import Alert, ChangeEvent, alert_document
from bookaudit.consumers.audit.rows import stored_row
from bookaudit.consumers.records import AuditEntry, FieldChange, Record, decode_and_map
from bookaudit.kafka import _avro_fast
from bookaudit.kafka.alert import DOCUMENT_KEYS
from bookaudit.kafka.serde import SOURCE_NAMES, envelope_record, key_record, to_kafka
from bookaudit.model import (
    ActorContext,
    Column,
    Envelope,
    EnvelopeSource,
    EnvelopeTransaction,
    Lsn,
    SourceInfo,
)
from tests.cdc.fixtures import change

# Where a name differs by design, the one rename per place; every other name is the schema's.
WAREHOUSE_ACTOR = {"id": "actor", "role": "actor_role", "origin": "actor_origin"}
ALERT_ACTOR = {"id": "actor_id", "role": "actor_role", "origin": "actor_origin"}
CONTEXT_JSON_ACTOR = {"id": "actor"}
ENTRY_COLUMNS = {
    "commit_position": "commit_lsn",
    "position": "lsn",
    "committed_at_ms": "committed_at",
}


def avsc(name: str) -> dict[str, Any]:
    doc = json.loads(read_text("schemas", name))
    assert isinstance(doc, dict)
    return doc


def names(record: Mapping[str, Any]) -> list[str]:
    return [f["name"] for f in record["fields"]]


def record_of(schema: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    """The record type of a field, through a ["null", ...] union or an array."""
    (t,) = [f["type"] for f in schema["fields"] if f["name"] == field]
    if isinstance(t, list):
        (t,) = [x for x in t if x != "null"]
    if t.get("type") == "array":
        t = t["items"]
    assert isinstance(t, Mapping) and t["type"] == "record"
    return t


ENVELOPE = avsc("envelope.avsc")
KEY = avsc("key.avsc")
ALERT = avsc("alert.avsc")
ACTOR_FIELDS = names(record_of(ENVELOPE, "actor"))
SOURCE = SourceInfo("bookings", "db")


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def test_typed_envelope_is_the_schema() -> None:
    assert field_names(Envelope) == names(ENVELOPE)
    assert field_names(EnvelopeSource) == [
        SOURCE_NAMES.get(n, n) for n in names(record_of(ENVELOPE, "source"))
    ]
    assert field_names(EnvelopeTransaction) == names(record_of(ENVELOPE, "transaction"))
    assert field_names(Column) == names(record_of(ENVELOPE, "columns"))
    # ActorContext puts `origin` first because it is the one field without a default.
    assert sorted(field_names(ActorContext)) == sorted(ACTOR_FIELDS)
    assert list(ActorContext(origin="x").to_dict()) == ACTOR_FIELDS


def test_fast_writer_and_reference_record_follow_the_schema_order() -> None:
    assert list(_avro_fast.ENVELOPE_FIELDS) == names(ENVELOPE)
    assert list(_avro_fast.SOURCE_FIELDS) == names(record_of(ENVELOPE, "source"))
    assert list(_avro_fast.TRANSACTION_FIELDS) == names(record_of(ENVELOPE, "transaction"))
    assert list(_avro_fast.ACTOR_FIELDS) == ACTOR_FIELDS
    assert list(_avro_fast.COLUMN_FIELDS) == names(record_of(ENVELOPE, "columns"))
    assert list(_avro_fast.KEY_FIELDS) == names(KEY)
    assert list(_avro_fast.KEY_COLUMN_FIELDS) == names(record_of(KEY, "columns"))
    record = envelope_record(change(), SOURCE, 1)
    assert list(record) == names(ENVELOPE)
    assert list(record["source"]) == names(record_of(ENVELOPE, "source"))
    assert list(record["transaction"]) == names(record_of(ENVELOPE, "transaction"))
    assert list(record["actor"]) == ACTOR_FIELDS
    assert list(record["columns"][0]) == names(record_of(ENVELOPE, "columns"))
    key = key_record(change())
    assert key is not None and list(key["columns"][0]) == names(record_of(KEY, "columns"))


def _table_columns(sql_text: str, table: str) -> list[str]:
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {re.escape(table)} \((.*?)\n\);", sql_text, re.S)
    assert body is not None, table
    columns = []
    for line in body.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("--") or line.split()[0].isupper():
            continue  # comments and table constraints (UNIQUE, PRIMARY KEY, ...)
        columns.append(line.split()[0])
    return columns


ROW_CHANGES = _table_columns(read_text("sql", "warehouse", "001_audit.sql"), "audit.row_changes")


def _an_entry() -> AuditEntry:
    good = to_kafka(change(), SOURCE, "ba", now_ms=1)
    entries, dead = decode_and_map([Record("t", 0, 0, good.key, good.value, good.headers)])
    assert dead == []
    (entry,) = entries
    return entry


def test_warehouse_ddl_has_a_column_for_every_actor_field() -> None:
    for field in ACTOR_FIELDS:
        assert WAREHOUSE_ACTOR.get(field, field) in ROW_CHANGES, field


def test_audit_writer_stores_every_column_the_ddl_has() -> None:
    assert sorted(CHAINED_COLUMNS) == sorted(ROW_CHANGES)
    stored = {"id", "recorded_at"}  # given by the writer, not by the entry
    stored |= {WAREHOUSE_ACTOR.get(f, f) for f in ACTOR_FIELDS}
    stored |= {ENTRY_COLUMNS.get(n, n) for n in AuditEntry._fields if n not in ("actor", "fields")}
    assert sorted(stored) == sorted(ROW_CHANGES)


def actor_columns_misplaced(columns: tuple[str, ...]) -> list[str]:
    """Actor fields the writer's row would put under another column than theirs."""
    entry = _an_entry()._replace(actor=ActorContext(**{f: f"v-{f}" for f in ACTOR_FIELDS}))
    values = stored_row(entry, 1, 0).values
    assert len(values) == len(columns)
    return [f for f in ACTOR_FIELDS if values[columns.index(WAREHOUSE_ACTOR.get(f, f))] != f"v-{f}"]


def test_audit_writer_puts_every_actor_field_in_its_column() -> None:
    assert actor_columns_misplaced(CHAINED_COLUMNS) == []


def test_a_drifted_column_list_is_caught() -> None:
    """The check above can fail: two actor columns swapped, as a careless edit would."""
    columns = list(CHAINED_COLUMNS)
    a, b = columns.index("reason"), columns.index("approval_ref")
    columns[a], columns[b] = columns[b], columns[a]
    assert actor_columns_misplaced(tuple(columns)) == ["reason", "approval_ref"]


def test_source_context_json_carries_every_actor_field() -> None:
    """What bookaudit._context_document() builds is what ActorContext.from_message reads."""
    sql_text = read_text("sql", "source", "001_context.sql")
    body = re.search(r"_context_document\(\).*?json_object\(\s*'\{([\w,]*)\}'::text\[\],"
                     r"\s*ARRAY\[(.*?)\]\)::text", sql_text, re.S)  # fmt: skip
    assert body is not None
    keys = body.group(1).split(",")
    values = re.split(r",\s*\n", body.group(2).strip())
    assert len(values) == len(keys), "a key without its value, or a value without its key"
    assert sorted(keys) == sorted(CONTEXT_JSON_ACTOR.get(f, f) for f in ACTOR_FIELDS)
    message = {k: f"v-{k}" for k in keys}
    actor = ActorContext.from_message(json.dumps(message).encode())
    for field in ACTOR_FIELDS:
        assert getattr(actor, field) == f"v-{CONTEXT_JSON_ACTOR.get(field, field)}", field


def test_alert_document_is_alert_avsc_and_copies_the_actor() -> None:
    assert list(DOCUMENT_KEYS) == names(ALERT)
    actor = ActorContext(**{f: f"v-{f}" for f in ACTOR_FIELDS})
    event = ChangeEvent(
        source="s", commit_position=Lsn(16), sequence=0, txid=1, committed_at_ms=0,
        table="public.bookings", booking_id="1", actor=actor,
        changes=(FieldChange("price", "1", "2"),), price_column="price", old_price="1",
        new_price="2", kafka_topic="t", kafka_partition=0, kafka_offset=0,
    )  # fmt: skip
    document = alert_document(Alert("r", "threshold", "high", "m", event, event.changes))
    assert [*document, "recorded_at_ms"] == names(ALERT)
    assert document["actor"] == actor.display
    carried = [f for f in ACTOR_FIELDS if ALERT_ACTOR.get(f, f) in document]
    assert carried, "alert.avsc lost every actor field"
    for field in carried:
        assert document[ALERT_ACTOR.get(field, field)] == f"v-{field}", field
    alerts = _table_columns(read_text("sql", "warehouse", "002_alerts.sql"), "audit.alerts")
    for field in ("role", "approval_ref"):
        assert WAREHOUSE_ACTOR.get(field, field) in alerts
