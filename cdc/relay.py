"""Trigger-mode capture: fetch → map → publish → release, relaying the outbox in commit order.

Rows leave `bookaudit.outbox` only after Kafka acknowledged every event of their transaction,
and only whole transactions leave, so a crash anywhere re-sends at most what was in flight; the
warehouse drops those repeats on (source, commit_seq, sequence).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bookaudit.cdc.baseline import BaselineSource, relay_baseline
from bookaudit.cdc.outbox import OutboxCommit, OutboxRow, OutboxTransaction
from bookaudit.cdc.produce import AckLedger
from bookaudit.cdc.settings import PROGRESS_INTERVAL_S, CaptureSettings, CaptureStats
from bookaudit.cdc.stream import Catalog
from bookaudit.classify import kafka_error, pg_error
from bookaudit.errors import SourceCheckError, TerminalError, TransientError
from bookaudit.kafka.producer import KafkaSink, ProducerSettings
from bookaudit.kafka.serde import to_kafka
from bookaudit.model import OUTBOX_TRIGGER, CommitSeq, SourceInfo, TableSchema

RELAY_BATCH = 5000
ALL_ROWS = 2**31 - 1
IDLE_SLEEP_S = 0.2
# pg_try_advisory_lock key: one relay per outbox, or two would race to delete each other's rows.
RELAY_LOCK = (1651204468, 2)

_COMMITS = """
SELECT commit_seq, txid, changes, floor(extract(epoch FROM committed_at) * 1000)::bigint
FROM bookaudit.outbox_commits WHERE commit_seq > %s ORDER BY commit_seq LIMIT %s
"""

_RELEASE = (
    "DELETE FROM bookaudit.outbox WHERE txid = ANY(%(txids)s)",
    "DELETE FROM bookaudit.outbox_commits WHERE commit_seq = ANY(%(seqs)s)",
)


@dataclass(frozen=True)
class Shape:
    """A table's stored columns, their types and its key, as the statement that wrote a queued
    row saw them (bookaudit.outbox_shapes). `types` is None for a type dropped since."""

    relid: int
    columns: tuple[str, ...]
    types: tuple[str | None, ...]
    key: tuple[str, ...]

    def table(self, schema: str, name: str) -> TableSchema:
        return TableSchema(
            oid=self.relid,
            schema=schema,
            name=name,
            columns=self.columns,
            types=tuple(t or "text" for t in self.types),
            key=self.key,
        )


_SHAPES = """
SELECT s.shape, s.relid, s.columns, s.key,
       ARRAY(SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_type WHERE oid = x.t)
                         THEN format_type(x.t, x.m) END
             FROM unnest(s.types, s.typmods) WITH ORDINALITY x(t, m, n) ORDER BY x.n)
FROM bookaudit.outbox_shapes s WHERE s.shape = ANY(%s)
"""


def _rows_query(
    hstore: str, tables: Sequence[TableSchema], shapes: Mapping[int, Shape]
) -> sql.Composed:
    """Outbox rows of some transactions, each value re-rendered in this session.

    The trigger ran hstore(NEW) in the application's session, whose TimeZone or DateStyle may
    be anything; logical decoding renders in a default session. Casting back through the column's
    type and out again makes the text what pgoutput would have sent. The type is the one the row
    was written with (its shape), not the table's type now: a numeric(10,2) value queued before
    an ALTER TYPE to numeric(12,4) still reads 12.50. Rows written before shapes existed are read
    through the table's row type as it is now. Rows of a shape or table not (yet) known come
    back raw and flagged, so they are never skipped.
    """
    h = sql.Identifier(hstore)

    def by_table(column: str, table: TableSchema) -> sql.Composed:
        return sql.SQL(
            "CASE WHEN {c} IS NULL THEN NULL ELSE "
            "{h}.hstore_to_array({h}.hstore({h}.populate_record(NULL::{t}, {c}))) END"
        ).format(c=sql.Identifier(column), h=h, t=sql.Identifier(table.schema, table.name))

    def by_shape(column: str, shape: Shape) -> sql.Composed:
        values: list[sql.Composable] = []
        for name, type_text in zip(shape.columns, shape.types, strict=True):
            value = sql.SQL("{h}.fetchval({c}, {k})").format(
                h=h, c=sql.Identifier(column), k=sql.Literal(name)
            )
            if type_text is not None:
                # format_type's own output: the server's spelling of a type (with its modifier),
                # which no psycopg.sql composable expresses. format('%s') renders through the
                # type's output function, as pgoutput does; a ::text cast would not (bool reads
                # 'true', char(n) loses its padding).
                value = sql.SQL(
                    "CASE WHEN {v} IS NULL THEN NULL ELSE format('%%s', ({v})::{t}) END"
                ).format(v=value, t=sql.SQL(type_text))
            values.extend((sql.Literal(name), value))
        return sql.SQL("CASE WHEN {c} IS NULL THEN NULL ELSE ARRAY[{v}]::text[] END").format(
            c=sql.Identifier(column), v=sql.SQL(", ").join(values)
        )

    head = "SELECT txid, seq, context_seq, schema_name, table_name, op::text, context::text, "
    where = "txid = ANY(%(txids)s) AND seq >= %(from_seq)s"
    branches = [
        sql.SQL(head + "{old}, {new}, true, shape FROM bookaudit.outbox "
                "WHERE shape = {s} AND " + where).format(
            old=by_shape("old_row", shape), new=by_shape("new_row", shape), s=sql.Literal(number),
        )
        for number, shape in shapes.items()
    ]  # fmt: skip
    branches += [
        sql.SQL(head + "{old}, {new}, true, shape FROM bookaudit.outbox "
                "WHERE shape IS NULL AND schema_name = {s} AND table_name = {n} AND " + where).format(
            old=by_table("old_row", t), new=by_table("new_row", t),
            s=sql.Literal(t.schema), n=sql.Literal(t.name),
        )
        for t in tables
    ]  # fmt: skip
    branches.append(
        sql.SQL(
            head + "{h}.hstore_to_array(old_row), {h}.hstore_to_array(new_row), false, shape "
            "FROM bookaudit.outbox WHERE CASE WHEN shape IS NULL THEN NOT EXISTS (SELECT 1 FROM "
            "unnest({s}::text[], {n}::text[]) k(s, n) WHERE k.s = schema_name AND k.n = table_name)"
            " ELSE shape <> ALL({known}::integer[]) END AND " + where
        ).format(
            h=h,
            s=sql.Literal([t.schema for t in tables]),
            n=sql.Literal([t.name for t in tables]),
            known=sql.Literal(list(shapes)),
        )
    )
    return sql.SQL(" UNION ALL ").join(branches) + sql.SQL(" ORDER BY txid, seq LIMIT %(limit)s")


class OutboxSource:
    """The Postgres edge of the relay: reads the outbox in commit order and deletes what is done."""

    def __init__(self, dsn: str) -> None:
        self.catalog = Catalog(dsn)
        self.conn = self.catalog.conn
        try:
            self._check_installed()
            self.hstore = self._hstore_schema()
            self.tables: dict[tuple[str, str], TableSchema] = {}
            self.shapes: dict[int, Shape] = {}
            self._shape_tables: dict[tuple[int, str, str], TableSchema] = {}
            self._query: sql.Composed | None = None
            self.refresh_tables()
        except psycopg.Error as exc:
            self.catalog.close()
            raise pg_error("outbox relay: cannot read the outbox's setup", exc) from None
        except BaseException:
            self.catalog.close()
            raise

    @property
    def dbname(self) -> str:
        return self.catalog.dbname

    def _check_installed(self) -> None:
        row = self.conn.execute("SELECT to_regclass('bookaudit.outbox') IS NOT NULL").fetchone()
        if not (row and row[0]):
            raise SourceCheckError(
                "bookaudit.outbox does not exist: run `bookaudit source install --mode trigger` "
                "first"
            )
        row = self.conn.execute(
            "SELECT to_regclass('bookaudit.outbox_shapes') IS NOT NULL"
        ).fetchone()
        if not (row and row[0]):
            raise SourceCheckError(
                "bookaudit.outbox was installed by an older bookaudit (no outbox_shapes): rerun "
                "`bookaudit source install --mode trigger` with your --table list"
            )
        locked = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", RELAY_LOCK).fetchone()
        if not (locked and locked[0]):
            raise TransientError(f"another relay is draining the outbox of {self.dbname!r}")

    def _hstore_schema(self) -> str:
        row = self.conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'hstore'"
        ).fetchone()
        if row is None:
            raise SourceCheckError("the hstore extension is missing: rerun `source install`")
        return str(row[0])

    def refresh_tables(self) -> None:
        """The tables that carry the outbox trigger, as the catalog describes them now."""
        rows = self.conn.execute(
            "SELECT DISTINCT n.nspname, c.relname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            # A partition's clone records its rows as its partitioned table's.
            "WHERE t.tgname = %s AND t.tgparentid = 0",
            (OUTBOX_TRIGGER,),
        ).fetchall()
        self.tables = {}
        for schema, name in rows:
            self.learn(str(schema), str(name))

    def learn(self, schema: str, name: str) -> TableSchema:
        table = self.catalog.table(schema, name)
        if table is None:
            raise TerminalError(
                f"the outbox holds changes of {schema}.{name}, which no longer exists: "
                "recreate it or delete its rows from bookaudit.outbox by hand"
            )
        self.tables[(schema, name)] = table
        self._query = None
        return table

    def commits(self, after: int, limit: int) -> list[OutboxCommit]:
        return [
            OutboxCommit(CommitSeq(int(s)), int(x), int(n), int(ms))
            for s, x, n, ms in self.conn.execute(_COMMITS, (after, limit)).fetchall()
        ]

    def rows(self, txids: Sequence[int], from_seq: int, limit: int) -> list[OutboxRow]:
        """Rows ordered by (txid, seq), values as pgoutput would render them."""
        while True:
            if self._query is None:
                self._query = _rows_query(self.hstore, list(self.tables.values()), self.shapes)
            fetched = self.conn.execute(
                self._query, {"txids": list(txids), "from_seq": from_seq, "limit": limit}
            ).fetchall()
            unknown = [r for r in fetched if not r[9]]
            if not unknown:
                return [
                    OutboxRow(int(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]),
                              r[7], r[8], r[6], None if r[10] is None else int(r[10]))
                    for r in fetched
                ]  # fmt: skip
            # Written since we last looked (a new shape, or a table audited since we started):
            # learn it, read again.
            self.learn_shapes({int(r[10]) for r in unknown if r[10] is not None})
            for schema, name in sorted({(str(r[3]), str(r[4])) for r in unknown if r[10] is None}):
                self.learn(schema, name)

    def learn_shapes(self, numbers: set[int]) -> None:
        if not numbers:
            return
        for number, relid, columns, key, types in self.conn.execute(
            _SHAPES, (sorted(numbers),)
        ).fetchall():
            self.shapes[int(number)] = Shape(int(relid), tuple(columns), tuple(types), tuple(key))
        self._query = None
        missing = numbers - self.shapes.keys()
        if missing:
            raise TerminalError(
                f"outbox rows name shapes {sorted(missing)} that bookaudit.outbox_shapes lacks: "
                "rerun `bookaudit source install --mode trigger`"
            )

    def table_of(self, row: OutboxRow) -> TableSchema:
        """The table as the row was written: its shape, else (older rows) the table now."""
        if row.shape is None:
            return self.tables[(row.schema, row.table)]
        key = (row.shape, row.schema, row.table)
        table = self._shape_tables.get(key)
        if table is None:
            table = self._shape_tables[key] = self.shapes[row.shape].table(row.schema, row.table)
        return table

    def release(self, commits: Sequence[OutboxCommit]) -> None:
        """Delete whole transactions, in one transaction, once Kafka acknowledged them."""
        params: dict[str, Any] = {
            "txids": [c.txid for c in commits],
            "seqs": [c.commit_seq for c in commits],
        }
        with self.conn.transaction():
            for statement in _RELEASE:
                self.conn.execute(statement, params)

    def pending(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM bookaudit.outbox_commits").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.catalog.close()


class OutboxRelay:
    """The trigger-mode twin of Capture: same settings, same envelope, same topics."""

    def __init__(self, settings: CaptureSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.log = log
        self.stats = CaptureStats()
        self.outbox = OutboxSource(settings.source_dsn)
        self.source = SourceInfo(
            name=settings.source_name,
            db=self.outbox.dbname,
            mode="trigger",
            identity=self.outbox.catalog.identity(),
        )
        self.sink = KafkaSink(ProducerSettings(settings.kafka_bootstrap, settings.partitions))
        self.ledger = AckLedger()
        self._after = 0
        self._last_progress = time.monotonic()

    def fetch(self) -> list[OutboxCommit]:
        """The next committed transactions in commit order, about RELAY_BATCH changes in all."""
        commits = self.outbox.commits(self._after, RELAY_BATCH)
        batch: list[OutboxCommit] = []
        total = 0
        for commit in commits:
            if batch and total + commit.changes > RELAY_BATCH:
                break
            batch.append(commit)
            total += commit.changes
        return batch

    def pages(self, commits: Sequence[OutboxCommit]) -> Iterator[list[OutboxRow]]:
        """A batch of small transactions in one read; one big transaction page by page."""
        txids = [c.txid for c in commits]
        if len(commits) > 1:
            # `changes` is only a hint (SET CONSTRAINTS ALL IMMEDIATE counts early): read all.
            yield self.outbox.rows(txids, 0, ALL_ROWS)
            return
        from_seq = 0
        while True:
            page = self.outbox.rows(txids, from_seq, RELAY_BATCH)
            yield page
            if len(page) < RELAY_BATCH:
                return
            from_seq = page[-1].seq + 1

    def relay(self, commits: Sequence[OutboxCommit]) -> None:
        mappers = {c.txid: OutboxTransaction(c) for c in commits}
        by_txid: dict[int, list[OutboxRow]] = {}
        single = len(commits) == 1
        for page in self.pages(commits):
            if single:
                self.publish(mappers[commits[0].txid], page)
            else:
                for row in page:
                    by_txid.setdefault(row.txid, []).append(row)
        for commit in commits:
            if not single:
                self.publish(mappers[commit.txid], by_txid.get(commit.txid, []))
            self.ledger.close(commit.commit_seq)
            self.stats.transactions += 1
        self._after = commits[-1].commit_seq

    def publish(self, mapper: OutboxTransaction, rows: Sequence[OutboxRow]) -> None:
        now_ms = time.time_ns() // 1_000_000
        for row in rows:
            table = self.outbox.table_of(row)
            record = to_kafka(
                mapper.change(row, table), self.source, self.settings.topic_prefix, now_ms
            )
            self.sink.send(record, self.ledger.track())
            self.stats.changes += 1
        self.sink.poll(0)

    def release(self, commits: Sequence[OutboxCommit]) -> None:
        """Wait for Kafka, then delete the acknowledged prefix of the batch from the outbox."""
        self.sink.flush()
        if self.ledger.error:
            raise kafka_error("Kafka refused an event", self.ledger.failure)
        acked = self.ledger.advance()
        done = [c for c in commits if c.commit_seq <= acked]
        if done:
            self.outbox.release(done)
            self.stats.confirmed_lsn = done[-1].commit_seq
        if len(done) != len(commits):
            raise TransientError("Kafka did not acknowledge every event of the batch")

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.log(
                f"relay: {self.stats.changes} changes in {self.stats.transactions} transactions, "
                f"released through commit {self.stats.confirmed_lsn}"
            )

    def run(self) -> CaptureStats:
        try:
            self.sink.check()
            # New partitions already clone the outbox trigger; this adds the statement trigger
            # that a write straight into one of them fires.
            try:
                adopted = self.outbox.catalog.adopt_partitions(self.settings.publication)
            except SourceCheckError as exc:  # only the shape cache's reset is missing there
                adopted = [str(exc)]
            for line in adopted:
                self.log(f"relay: {line}")
            self.stats.baseline = relay_baseline(
                BaselineSource(self.outbox.conn),
                self.sink,
                self.source,
                self.settings.topic_prefix,
                self.log,
            )
            self.log(
                f"relay: draining the outbox of {self.outbox.dbname!r} to "
                f"{self.settings.kafka_bootstrap}"
            )
            while True:
                commits = self.fetch()
                if commits:
                    self.relay(commits)
                    self.release(commits)
                    self.report_progress()
                elif self.settings.exit_when_idle:
                    break
                else:
                    time.sleep(IDLE_SLEEP_S)
        except psycopg.Error as exc:
            raise pg_error("outbox relay: source query failed", exc) from None
        finally:
            self.close()
        self.log(
            f"relay: done, {self.stats.changes} changes, released through commit "
            f"{self.stats.confirmed_lsn}"
        )
        return self.stats

    def close(self) -> None:
        self.outbox.close()
