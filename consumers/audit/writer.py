"""Warehouse edge of the audit writer: one idempotent transaction per batch, rows in by COPY and
one chain link per transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bookaudit.chain import CHAINED_COLUMNS, FieldRow, leaf
from bookaudit.classify import pg_connect_error
from bookaudit.consumers.records import AuditEntry, DeadLetter, distinct_entries, identity
from bookaudit.errors import BookauditError, TerminalError, TransientError
from bookaudit.model import format_position, parse_position

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# One round trip before the rows go in: which of the batch's events the warehouse already holds
# (a replay, or a copy another writer stored), and a block of ids for the rest. Ids cannot come
# from COPY itself, and the leaves hash them.
_PREPARE = """
SELECT array(SELECT nextval(pg_get_serial_sequence('audit.row_changes', 'id'))
             FROM generate_series(1, %(n)s)),
       array(SELECT ARRAY[r.source, r.commit_lsn::text, r.sequence::text]
             FROM audit.row_changes r
             JOIN unnest(%(sources)s::text[], %(commits)s::pg_lsn[], %(sequences)s::bigint[])
                  AS k(source, commit_lsn, sequence)
             USING (source, commit_lsn, sequence))
"""

_COPY_ROWS = "COPY audit.row_changes ({}) FROM STDIN".format(", ".join(CHAINED_COLUMNS))
_COPY_FIELDS = (
    "COPY audit.field_changes (change_id, field, position, old_value, new_value) FROM STDIN"
)
_LINK = "SELECT audit.chain_link(%s, %s)"

_DEAD_LETTER = """
INSERT INTO audit.dead_letters (kafka_topic, kafka_partition, kafka_offset, key, value, error)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING
"""

# A copy stored by another writer between our check and our COPY makes the COPY fail on the
# unique key; the next attempt's check sees it. More attempts than this means something else.
_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One audit.row_changes row as the chain hashes it, with its field rows."""

    values: tuple[Any, ...]
    fields: tuple[FieldRow, ...]


def stored_row(entry: AuditEntry, change_id: int, recorded_at_us: int) -> StoredRow:
    """Pure: the values of CHAINED_COLUMNS for `entry`, in the chain's types (positions as ints,
    timestamps as epoch microseconds, jsonb as dicts)."""
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


def _copy_values(row: StoredRow) -> tuple[Any, ...]:
    """The same values as COPY sends them: pg_lsn and jsonb as text, timestamps as datetimes."""
    v = row.values
    return (
        *v[:2],
        format_position(v[2]),
        v[3],
        format_position(v[4]),
        v[5],
        _EPOCH + timedelta(microseconds=v[6]),
        *v[7:10],
        *(None if d is None else json.dumps(d, ensure_ascii=False) for d in v[10:13]),
        *v[13:26],
        _EPOCH + timedelta(microseconds=v[26]),
    )


class EntryRejected(BookauditError):
    """The warehouse refused a value of the batch (SQLSTATE class 22, data exception)."""


class WarehouseWriter:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(self._dsn, application_name="bookaudit-audit-writer")
        except psycopg.OperationalError as exc:
            # Down or restarting: retry; up but refusing us (password, database): stop.
            raise pg_connect_error("cannot connect to the warehouse", exc, self._dsn) from None

    def write(self, entries: Sequence[AuditEntry], dead: Sequence[DeadLetter]) -> int:
        """Commit the whole batch or nothing; the caller commits Kafka offsets only after this.

        Returns how many entries were new: the rest were copies of events already stored, or
        already in this batch, and were dropped.
        """
        if self._conn.closed:
            self._conn = self._connect()
        unique = distinct_entries(entries)
        try:
            for _ in range(_ATTEMPTS):
                try:
                    with self._conn.transaction():
                        inserted = self._store(unique)
                        self._dead_letters(dead)
                    return inserted
                except psycopg.errors.UniqueViolation:
                    continue
        except psycopg.OperationalError as exc:
            self._conn.close()
            raise TransientError(f"warehouse write failed: {str(exc).strip()}") from None
        except psycopg.errors.UndefinedTable:
            raise TerminalError(
                "the warehouse has no audit schema: run `bookaudit warehouse init` first"
            ) from None
        except psycopg.errors.DataError as exc:
            # Class 22: a value the warehouse cannot hold (a NUL in text or jsonb). Retrying the
            # batch fails the same way, so the caller finds the entry and dead-letters it.
            raise EntryRejected(
                f"{exc.diag.message_primary or type(exc).__name__} (SQLSTATE {exc.sqlstate})"
            ) from None
        except psycopg.errors.UndefinedFunction:
            raise TerminalError(
                "the warehouse's audit schema is older than this writer: "
                "run `bookaudit warehouse init` to upgrade it"
            ) from None
        raise TransientError(
            f"warehouse write: another writer kept storing the same events ({_ATTEMPTS} attempts)"
        )

    def _store(self, unique: Sequence[AuditEntry]) -> int:
        if not unique:
            return 0
        prepared = self._conn.execute(
            _PREPARE,
            {
                "n": len(unique),
                "sources": [e.source for e in unique],
                "commits": [format_position(e.commit_position) for e in unique],
                "sequences": [e.sequence for e in unique],
            },
        ).fetchone()
        assert prepared is not None
        ids: list[int] = prepared[0]
        stored = {(s, parse_position(c), int(q)) for s, c, q in prepared[1]}
        new = [e for e in unique if identity(e) not in stored]
        if not new:
            return 0
        recorded_at_us = time.time_ns() // 1000
        rows = [stored_row(e, i, recorded_at_us) for e, i in zip(new, ids, strict=False)]
        cur = self._conn.cursor()
        with cur.copy(_COPY_ROWS) as copy:
            for row in rows:
                copy.write_row(_copy_values(row))
        with cur.copy(_COPY_FIELDS) as copy:
            for row in rows:
                change_id = row.values[0]
                for field in row.fields:
                    copy.write_row((change_id, *field))
        leaves = b"".join(leaf(row.values, row.fields) for row in rows)
        cur.execute(_LINK, ([row.values[0] for row in rows], leaves))
        return len(rows)

    def _dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            r = letter.record
            self._conn.execute(
                _DEAD_LETTER, (r.topic, r.partition, r.offset, r.key, r.value, letter.error)
            )

    def close(self) -> None:
        self._conn.close()
