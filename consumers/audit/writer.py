"""Warehouse edge of the audit writer: one idempotent transaction per batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

import psycopg

from bookaudit.consumers.records import AuditEntry, DeadLetter, distinct_entries
from bookaudit.errors import TerminalError, TransientError
from bookaudit.model import format_position

# One round trip per batch: the entries travel as one JSON array; ON CONFLICT skips replays, and
# only rows inserted now get their field rows, so a replayed batch adds nothing.
_INSERT = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(entries)s::jsonb) AS x(
        source text, commit_lsn pg_lsn, sequence bigint, lsn pg_lsn, txid bigint,
        committed_at_ms bigint, schema_name text, table_name text, action text, row_key jsonb,
        before jsonb, after jsonb, actor jsonb, capture_mode text, kafka_topic text,
        kafka_partition int, kafka_offset bigint, fields jsonb)
),
inserted AS (
    INSERT INTO audit.row_changes (
        source, commit_lsn, sequence, lsn, txid, committed_at, schema_name, table_name, action,
        row_key, before, after, actor, actor_role, reason, approval_ref, request_id, application,
        db_user, client_addr, actor_origin, capture_mode, kafka_topic, kafka_partition,
        kafka_offset)
    SELECT source, commit_lsn, sequence, lsn, txid, to_timestamp(committed_at_ms / 1000.0),
           schema_name, table_name, action, row_key, before, after,
           actor ->> 'id', actor ->> 'role', actor ->> 'reason', actor ->> 'approval_ref',
           actor ->> 'request_id', actor ->> 'application', actor ->> 'db_user',
           actor ->> 'client_addr', actor ->> 'origin', capture_mode, kafka_topic,
           kafka_partition, kafka_offset
    FROM input
    ON CONFLICT (source, commit_lsn, sequence) DO NOTHING
    RETURNING id, source, commit_lsn, sequence
),
fields AS (
    INSERT INTO audit.field_changes (change_id, field, position, old_value, new_value)
    SELECT i.id, f.field, f.position, f.old, f.new
    FROM inserted i
    JOIN input USING (source, commit_lsn, sequence)
    CROSS JOIN LATERAL ROWS FROM (
        jsonb_to_recordset(input.fields) AS (field text, old text, new text)
    ) WITH ORDINALITY AS f(field, old, new, position)
)
SELECT coalesce(array_agg(id), '{}') FROM inserted
"""

# A separate statement: rows written by the CTEs above are invisible to that statement itself.
_CHAIN = "SELECT audit.chain_append(%s)"

_DEAD_LETTER = """
INSERT INTO audit.dead_letters (kafka_topic, kafka_partition, kafka_offset, key, value, error)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING
"""


def _as_json(entry: AuditEntry) -> dict[str, object]:
    return {
        "source": entry.source,
        "commit_lsn": format_position(entry.commit_position),
        "sequence": entry.sequence,
        "lsn": format_position(entry.position),
        "txid": entry.txid,
        "committed_at_ms": entry.committed_at_ms,
        "schema_name": entry.schema_name,
        "table_name": entry.table_name,
        "action": entry.action,
        "row_key": entry.row_key,
        "before": entry.before,
        "after": entry.after,
        "actor": entry.actor,
        "capture_mode": entry.capture_mode,
        "kafka_topic": entry.kafka_topic,
        "kafka_partition": entry.kafka_partition,
        "kafka_offset": entry.kafka_offset,
        "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in entry.fields],
    }


class WarehouseWriter:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(self._dsn, application_name="bookaudit-audit-writer")
        except psycopg.OperationalError as exc:
            raise TransientError(f"cannot connect to the warehouse: {str(exc).strip()}") from None

    def write(self, entries: Sequence[AuditEntry], dead: Sequence[DeadLetter]) -> int:
        """Commit the whole batch or nothing; the caller commits Kafka offsets only after this.

        Returns how many entries were new: the rest were copies of events already stored, or
        already in this batch, and were dropped.
        """
        if self._conn.closed:
            self._conn = self._connect()
        unique = distinct_entries(entries)
        inserted = 0
        try:
            with self._conn.transaction():
                if unique:
                    payload = json.dumps([_as_json(e) for e in unique])
                    row = self._conn.execute(_INSERT, {"entries": payload}).fetchone()
                    assert row is not None
                    ids = cast(list[int], row[0])
                    inserted = len(ids)
                    self._conn.execute(_CHAIN, (ids,))
                for letter in dead:
                    r = letter.record
                    self._conn.execute(
                        _DEAD_LETTER, (r.topic, r.partition, r.offset, r.key, r.value, letter.error)
                    )
        except psycopg.OperationalError as exc:
            self._conn.close()
            raise TransientError(f"warehouse write failed: {str(exc).strip()}") from None
        except psycopg.errors.UndefinedTable:
            raise TerminalError(
                "the warehouse has no audit schema: run `bookaudit warehouse init` first"
            ) from None
        return inserted

    def close(self) -> None:
        self._conn.close()
