"""Warehouse edge of the audit writer: rows prepared and hashed in Python, then one idempotent
transaction per batch that COPYs them in and appends one chain link."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bookaudit.chain import JSONB_COLUMNS, ROW_FORM, SCALAR_COLUMNS, FieldRow, dump_json
from bookaudit.classify import pg_connect_error
from bookaudit.consumers.records import AuditEntry, DeadLetter
from bookaudit.errors import BookauditError, TerminalError, TransientError
from bookaudit.model import Position, format_position, parse_position

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """One audit row ready to store: its values, its field rows and its chain leaf, and the same
    values as lines of COPY's text format."""

    key: tuple[str, Position, int]
    # The Kafka record it came from (topic, partition, offset): where a refusal points.
    where: tuple[str, int, int]
    change_id: int
    values: tuple[Any, ...]
    fields: tuple[tuple[int, str, int, str | None, str | None], ...]
    leaf: bytes
    # `values` as one line of `COPY audit.row_changes (SCALAR_COLUMNS, JSONB_COLUMNS)`, and
    # `fields` as lines of `COPY audit.field_changes`.
    line: str
    field_lines: str


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One audit.row_changes row as the chain hashes it (and verify reads it back), with its
    field rows."""

    values: tuple[Any, ...]
    fields: tuple[FieldRow, ...]


def stored_row(entry: AuditEntry, change_id: int, recorded_at_us: int) -> StoredRow:
    """Pure: the values of CHAINED_COLUMNS for `entry`, in the chain's types (positions as ints,
    timestamps as epoch microseconds, jsonb as dicts). The reference that `prepare_rows` must
    hash the same as (tests/consumers/audit/test_writer_rows.py)."""
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


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str | None) -> str:
    """A text value as COPY's text format spells it: NULL is \\N; backslash, tab, newline and
    carriage return are escaped."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _json_copy_text(value: object, text: str) -> str:
    """`text`, the dump_json of `value`, as COPY's text format spells it (NULL for None)."""
    if value is None:
        return "\\N"
    # dump_json escapes every control character, so of COPY's specials only the backslash is
    # left in its output.
    return text.replace("\\", "\\\\") if "\\" in text else text


class _Times:
    """Timestamps as datetimes and as COPY text, kept per value: a transaction's changes share
    one commit time and a batch one recorded_at."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[datetime, str]] = {}

    def __call__(self, us: int) -> tuple[datetime, str]:
        found = self._seen.get(us)
        if found is None:
            at = _EPOCH + timedelta(microseconds=us)
            found = self._seen[us] = (at, at.isoformat())
        return found


def prepare_rows(
    entries: Sequence[AuditEntry], ids: Sequence[int], recorded_at_us: int
) -> list[PreparedRow]:
    """Pure: each entry as COPY sends it (SCALAR_COLUMNS then JSONB_COLUMNS) and its leaf as the
    chain hashes it, from one JSON encoding of each jsonb value. The writer's hot path: what is
    shared by the batch's rows (texts of names, times, actors) is formatted once."""
    times = _Times()
    recorded_at, recorded_text = times(recorded_at_us)
    texts: dict[str, str] = {}
    # By the context's id: the entries hold each one for the whole call, and a transaction's
    # entries share one.
    actors: dict[int, tuple[tuple[str | None, ...], str]] = {}
    positions: dict[int, str] = {}
    dump = dump_json
    sha256 = hashlib.sha256
    out: list[PreparedRow] = []
    for change, cid in zip(entries, ids, strict=True):
        source, commit, seq = change.source, change.commit_position, change.sequence
        topic, partition, offset = change.kafka_topic, change.kafka_partition, change.kafka_offset
        lsn = change.position
        committed_us = change.committed_at_ms * 1000
        committed_at, committed_text = times(committed_us)
        found = actors.get(id(change.actor))
        if found is None:
            ordered = tuple(change.actor.to_dict().values())  # ACTOR_FIELDS' order
            found = actors[id(change.actor)] = (ordered, "\t".join(copy_text(a) for a in ordered))
        actor, actor_text = found
        commit_text = positions.get(commit)
        if commit_text is None:
            commit_text = positions[commit] = format_position(commit)
        lsn_text = format_position(lsn)
        fields = tuple(
            (cid, f, n, old, new) for n, (f, old, new) in enumerate(change.fields, start=1)
        )
        key_json, before_json, after_json = (
            dump(change.row_key),
            dump(change.before),
            dump(change.after),
        )
        head = dump(
            [ROW_FORM, cid, source, commit, seq, lsn, change.txid, committed_us,
             change.schema_name, change.table_name, change.action, *actor, change.capture_mode,
             topic, partition, offset, recorded_at_us, [f[1:] for f in fields]]
        )  # fmt: skip
        leaf = sha256("\n".join((head, key_json, before_json, after_json)).encode()).digest()
        names = []
        for name in (source, change.schema_name, change.table_name, change.capture_mode, topic):
            t = texts.get(name)
            if t is None:
                t = texts[name] = copy_text(name)
            names.append(t)
        line = (
            f"{cid}\t{names[0]}\t{commit_text}\t{seq}\t{lsn_text}\t{change.txid}\t"
            f"{committed_text}\t{names[1]}\t{names[2]}\t{change.action}\t{actor_text}\t"
            f"{names[3]}\t{names[4]}\t{partition}\t{offset}\t{recorded_text}\t"
            f"{_json_copy_text(change.row_key, key_json)}\t"
            f"{_json_copy_text(change.before, before_json)}\t"
            f"{_json_copy_text(change.after, after_json)}\n"
        )
        field_lines = "".join(
            f"{cid}\t{copy_text(f)}\t{n}\t{copy_text(old)}\t{copy_text(new)}\n"
            for _, f, n, old, new in fields
        )
        values = (
            cid, source, commit_text, seq, lsn_text, change.txid, committed_at,
            change.schema_name, change.table_name, change.action, *actor, change.capture_mode,
            topic, partition, offset, recorded_at,
            None if change.row_key is None else key_json,
            None if change.before is None else before_json,
            None if change.after is None else after_json,
        )  # fmt: skip
        out.append(
            PreparedRow(
                (source, commit, seq),
                (topic, partition, offset),
                cid,
                values,
                fields,
                leaf,
                line,
                field_lines,
            )
        )
    return out


def prepare_row(entry: AuditEntry, change_id: int, recorded_at_us: int) -> PreparedRow:
    """Pure: one entry prepared as `prepare_rows` prepares it in a batch."""
    return prepare_rows([entry], [change_id], recorded_at_us)[0]


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
