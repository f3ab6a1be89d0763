"""Warehouse edge of the audit writer: one idempotent transaction per batch that COPYs the rows
prepared by `rows` in and appends one chain link."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bookaudit.chain import JSONB_COLUMNS, SCALAR_COLUMNS
from bookaudit.classify import pg_connect_error
from bookaudit.consumers.audit.rows import PreparedRow
from bookaudit.consumers.records import DeadLetter
from bookaudit.errors import BookauditError, TerminalError, TransientError
from bookaudit.model import format_position, parse_position

# Which of a batch's events the warehouse already holds: a replay, or a copy another writer
# stored. The rest go in by COPY, which has no ON CONFLICT (the unique key refuses a copy).
_STORED = """
SELECT r.source, r.commit_lsn::text, r.sequence
FROM audit.row_changes r
JOIN unnest(%s::text[], %s::pg_lsn[], %s::bigint[]) AS k(source, commit_lsn, sequence)
USING (source, commit_lsn, sequence)
"""
_TAKE_IDS = """
SELECT nextval(pg_get_serial_sequence('audit.row_changes', 'id')) FROM generate_series(1, %s)
"""
_COPY_ROWS = "COPY audit.row_changes ({}) FROM STDIN".format(
    ", ".join((*SCALAR_COLUMNS, *JSONB_COLUMNS))
)
_COPY_FIELDS = (
    "COPY audit.field_changes (change_id, field, position, old_value, new_value) FROM STDIN"
)
_LINK = "SELECT audit.chain_link(%s, %s)"
# Batches this small go in as pipelined INSERTs (the same values): one round trip where COPY
# takes two per table. Only for one or two rows: from five rows on, COPY costs less wall time
# and less CPU in both the writer and the warehouse (about 0.6x at 20 rows, 0.4x at 60).
_PIPELINED = 2
_INSERT_ROW = "INSERT INTO audit.row_changes ({}) VALUES ({})".format(
    ", ".join((*SCALAR_COLUMNS, *JSONB_COLUMNS)),
    ", ".join(["%s"] * (len(SCALAR_COLUMNS) + len(JSONB_COLUMNS))),
)
_INSERT_FIELD = (
    "INSERT INTO audit.field_changes (change_id, field, position, old_value, new_value) "
    "VALUES (%s, %s, %s, %s, %s)"
)

_DEAD_LETTER = """
INSERT INTO audit.dead_letters (kafka_topic, kafka_partition, kafka_offset, key, value, error)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING
"""

# A copy stored by another writer between our check and our COPY makes the COPY fail on the
# unique key; the next attempt's check sees it. More attempts than this means something else.
_ATTEMPTS = 5
# Ids are taken ahead in blocks, so preparing a batch costs no round trip most of the time.
_ID_BLOCK = 2000


@dataclass
class Phases:
    """Seconds spent in each step, summed over batches: the writer's profile, kept as it runs."""

    seconds: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        """Add the time since `since` to `name`; returns now, the start of the next step."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        return now


class IdPool:
    """Ids for audit rows, taken from the warehouse's sequence a block at a time. Ids a writer
    took and did not use (copies it dropped, a batch that failed) are simply never used."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._free: list[int] = []

    def take(self, n: int) -> list[int]:
        if len(self._free) < n:
            self._free += self._reserve(max(n - len(self._free), _ID_BLOCK))
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def _reserve(self, n: int) -> list[int]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._dsn, autocommit=True, application_name="bookaudit-audit-writer-ids"
                )
            return [int(r[0]) for r in self._conn.execute(_TAKE_IDS, (n,))]
        except psycopg.errors.UndefinedTable:
            raise TerminalError(
                "the warehouse has no audit schema: run `bookaudit warehouse init` first"
            ) from None
        except psycopg.OperationalError as exc:
            if self._conn is not None:
                self._conn.close()
            raise TransientError(f"cannot take audit row ids: {str(exc).strip()}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class EntryRejected(BookauditError):
    """The warehouse refused a value of the batch (SQLSTATE class 22, data exception)."""


class WarehouseWriter:
    def __init__(self, dsn: str, phases: Phases | None = None) -> None:
        self._dsn = dsn
        self._conn = self._connect()
        self.phases = phases or Phases()
        # Copies are rare in a running stream (a replay, a re-send after a restart), so a batch
        # goes straight in by COPY, and the unique key refuses it when it holds one; the check
        # for stored copies runs first only from then on, until a batch has none.
        self._expect_copies = True

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(self._dsn, application_name="bookaudit-audit-writer")
        except psycopg.OperationalError as exc:
            # Down or restarting: retry; up but refusing us (password, database): stop.
            raise pg_connect_error("cannot connect to the warehouse", exc, self._dsn) from None

    def write(self, rows: Sequence[PreparedRow], dead: Sequence[DeadLetter]) -> int:
        """Commit the whole batch or nothing; the caller commits Kafka offsets only after this.
        `rows` hold one copy per event (`distinct_entries`).

        Returns how many rows were new: the rest were copies of events already stored, and were
        dropped.
        """
        if self._conn.closed:
            self._conn = self._connect()
        try:
            for _ in range(_ATTEMPTS):
                try:
                    with self._conn.transaction():
                        inserted = self._store(rows, check=self._expect_copies)
                        self._dead_letters(dead)
                        started = time.perf_counter()
                    self.phases.lap("commit (SQL)", started)
                    # A clean batch written straight in: the stream is past any replay.
                    self._expect_copies = inserted < len(rows)
                    return inserted
                except psycopg.errors.UniqueViolation:
                    # The batch holds an event the warehouse has (a replay, a re-send, another
                    # writer's copy): write it again, checking first.
                    self._expect_copies = True
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

    def _store(self, rows: Sequence[PreparedRow], check: bool) -> int:
        if not rows:
            return 0
        lap = self.phases.lap
        started = time.perf_counter()
        new = list(rows)
        if check:
            found = self._conn.execute(
                _STORED,
                (
                    [r.key[0] for r in rows],
                    [format_position(r.key[1]) for r in rows],
                    [r.key[2] for r in rows],
                ),
                # Planned each time with the batch's keys: a prepared plan made while the
                # table was small hashed all of row_changes for every batch that checks.
                prepare=False,
            ).fetchall()
            stored = {(s, parse_position(c), int(q)) for s, c, q in found}
            new = [r for r in rows if r.key not in stored]
            started = lap("check for stored copies (SQL)", started)
        if not new:
            return 0
        link = ([r.change_id for r in new], b"".join(r.leaf for r in new))
        cur = self._conn.cursor()
        if len(new) <= _PIPELINED:
            # A few rows, as a steady stream brings them: rows, fields and link sent together
            # and answered together, one round trip where COPY takes two per table.
            with self._conn.pipeline():
                cur.executemany(_INSERT_ROW, [r.values for r in new])
                cur.executemany(_INSERT_FIELD, [f for r in new for f in r.fields])
                cur.execute(_LINK, link)
            lap("INSERT rows, fields and chain link, pipelined (SQL)", started)
            return len(new)
        with cur.copy(_COPY_ROWS) as copy:
            copy.write("".join([row.line for row in new]))
        with cur.copy(_COPY_FIELDS) as copy:
            copy.write("".join([row.field_lines for row in new]))
        started = lap("COPY rows and fields (SQL)", started)
        cur.execute(_LINK, link)
        lap("chain link (SQL)", started)
        return len(new)

    def _dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            r = letter.record
            self._conn.execute(
                _DEAD_LETTER, (r.topic, r.partition, r.offset, r.key, r.value, letter.error)
            )

    def close(self) -> None:
        self._conn.close()
