"""Relays the baseline `source install` staged: existing rows as snapshot events (op r), table by
table in key order, chunk by chunk, resuming after the last chunk Kafka acknowledged.

Both capture modes run it before their stream, so a consumer reads a row's baseline before any
change to it. Each event's identity is (source, the audit start's position, the row's place in
the baseline), below every streamed change's, so a chunk re-sent after a kill -9 is dropped by
the warehouse instead of doubled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bookaudit.cdc.produce import AckLedger
from bookaudit.errors import TransientError
from bookaudit.kafka.producer import KafkaSink
from bookaudit.kafka.serde import to_kafka
from bookaudit.model import (
    BASELINE,
    BASELINE_SEQ_COLUMN,
    CommitSeq,
    Lsn,
    Position,
    Row,
    RowChange,
    SourceInfo,
    TableSchema,
)

CHUNK_ROWS = 5000
PROGRESS_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class StagedTable:
    """One row of bookaudit.baseline: a table's copy and how much of it Kafka has."""

    position: int
    schema: str
    name: str
    staging: str
    key: tuple[str, ...]
    first_sequence: int
    rows: int
    sent: int


@dataclass(frozen=True, slots=True)
class BaselinePlan:
    """What remains to relay, and the audit start the events belong to."""

    position: Position  # the commit position every baseline event carries, below the stream's
    started_unix_ms: int
    total_rows: int
    tables: tuple[StagedTable, ...]


def baseline_change(
    table: TableSchema,
    row: Row,
    *,
    seq: int,
    staged: StagedTable,
    plan: BaselinePlan,
) -> RowChange:
    """Pure: the staged row numbered `seq` (from 1, in key order) as its snapshot event."""
    sequence = staged.first_sequence + seq - 1
    return RowChange(
        table=table,
        op="r",
        before=None,
        after=row,
        xid=0,
        commit_position=plan.position,
        position=plan.position,
        sequence=sequence,
        data_collection_order=seq - 1,
        commit_unix_ms=plan.started_unix_ms,
        actor=BASELINE,
        snapshot="last" if sequence == plan.total_rows - 1 else "true",
    )


class BaselineSource:
    """The Postgres edge: the staged copies, read as text exactly as pgoutput renders values."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.conn = conn

    def plan(self) -> BaselinePlan | None:
        """None when nothing is staged (a `--snapshot never` install, or all of it relayed)."""
        present = self.conn.execute(
            "SELECT to_regclass('bookaudit.baseline') IS NOT NULL"
        ).fetchone()
        if not (present and present[0]):
            return None
        start = self.conn.execute(
            "SELECT state, position, floor(extract(epoch FROM started_at) * 1000)::bigint, "
            "baseline_rows, mode FROM bookaudit.audit_start"
        ).fetchone()
        if start is not None and start[0] == "creating":
            raise TransientError("source install is still starting the audit; waiting for it")
        if start is None or start[1] is None:
            return None
        rows: list[tuple[Any, ...]] = self.conn.execute(
            "SELECT position, schema_name, table_name, staging, key_columns, first_sequence, "
            "rows, sent FROM bookaudit.baseline "
            # Tables still to send, or sent but whose copy a killed capture did not drop yet.
            "WHERE sent < rows OR to_regclass('bookaudit.' || quote_ident(staging)) IS NOT NULL "
            "ORDER BY position"
        ).fetchall()
        tables = tuple(
            StagedTable(int(p), str(s), str(n), str(g), tuple(k), int(f), int(r), int(x))
            for p, s, n, g, k, f, r, x in rows
        )
        if not tables:
            return None
        raw = int(str(start[1]))
        position: Position = CommitSeq(raw) if start[4] == "trigger" else Lsn(raw)
        return BaselinePlan(position, int(str(start[2])), int(str(start[3])), tables)

    def schema(self, staged: StagedTable) -> TableSchema:
        """The columns and types of the copy (the table as it was at install), the table's name."""
        columns = self.conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND attname <> %s ORDER BY attnum",
            (sql.Identifier("bookaudit", staged.staging).as_string(self.conn), BASELINE_SEQ_COLUMN),
        ).fetchall()
        oid = self.conn.execute(
            "SELECT coalesce(to_regclass(%s)::oid, 0)",
            (sql.Identifier(staged.schema, staged.name).as_string(self.conn),),
        ).fetchone()
        return TableSchema(
            oid=int(str(oid[0])) if oid else 0,
            schema=staged.schema,
            name=staged.name,
            columns=tuple(str(c[0]) for c in columns),
            types=tuple(str(c[1]) for c in columns),
            key=staged.key,
        )

    def chunk(
        self, staged: StagedTable, after: int, limit: int
    ) -> list[tuple[int, list[str | None]]]:
        """Rows numbered above `after`, each value its type's output text (as pgoutput sends it)."""
        cur = self.conn.execute(
            sql.SQL("SELECT * FROM {} WHERE {} > %s ORDER BY {} LIMIT %s").format(
                sql.Identifier("bookaudit", staged.staging),
                sql.Identifier(BASELINE_SEQ_COLUMN),
                sql.Identifier(BASELINE_SEQ_COLUMN),
            ),
            (after, limit),
        )
        result = cur.pgresult
        assert result is not None
        out = []
        for i in range(result.ntuples):
            seq = int(result.get_value(i, 0) or b"0")
            values = []
            for j in range(1, result.nfields):
                raw = result.get_value(i, j)
                values.append(None if raw is None else raw.decode())
            out.append((seq, values))
        return out

    def mark_sent(self, staged: StagedTable, sent: int) -> None:
        self.conn.execute(
            "UPDATE bookaudit.baseline SET sent = %s WHERE position = %s", (sent, staged.position)
        )

    def finish(self, staged: StagedTable) -> None:
        """The copy is in Kafka: give its space back."""
        self.conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("bookaudit", staged.staging))
        )


def relay_baseline(
    source: BaselineSource,
    sink: KafkaSink,
    info: SourceInfo,
    prefix: str,
    log: Callable[[str], None],
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Send what is left of the baseline; returns how many events were sent now."""
    plan = source.plan()
    if plan is None:
        return 0
    pending = sum(t.rows - t.sent for t in plan.tables)
    if pending:
        log(f"baseline: {pending} of {plan.total_rows} existing rows to send")
    sent_now = 0
    last_log = time.monotonic()
    for staged in plan.tables:
        done = staged.sent
        if done >= staged.rows:
            source.finish(staged)
            continue
        table = source.schema(staged)
        while done < staged.rows:
            rows = source.chunk(staged, done, chunk_rows)
            if not rows:
                break
            _send_chunk(sink, info, prefix, table, staged, plan, rows)
            done = rows[-1][0]
            source.mark_sent(staged, done)
            sent_now += len(rows)
            if time.monotonic() - last_log >= PROGRESS_INTERVAL_S:
                last_log = time.monotonic()
                log(f"baseline: {staged.schema}.{staged.name} {done}/{staged.rows} rows sent")
        source.finish(staged)
    if pending:
        log(f"baseline: done, {plan.total_rows} existing rows in Kafka")
    return sent_now


def _send_chunk(
    sink: KafkaSink,
    info: SourceInfo,
    prefix: str,
    table: TableSchema,
    staged: StagedTable,
    plan: BaselinePlan,
    rows: Sequence[tuple[int, list[str | None]]],
) -> None:
    """Produce a chunk and wait until Kafka acknowledged all of it, or fail without marking it."""
    ledger = AckLedger()
    now_ms = time.time_ns() // 1_000_000
    for seq, values in rows:
        row = dict(zip(table.columns, values, strict=True))
        change = baseline_change(table, row, seq=seq, staged=staged, plan=plan)
        sink.send(to_kafka(change, info, prefix, now_ms), ledger.track())
    sink.flush()
    if ledger.error or ledger.in_flight:
        raise TransientError(f"Kafka refused a baseline event: {ledger.error or 'no reply'}")
