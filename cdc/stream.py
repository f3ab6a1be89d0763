"""Postgres edge of the capture: the slot, the catalog lookups and the START_REPLICATION stream."""

from __future__ import annotations

import select
import time
from collections.abc import Mapping

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from bookaudit.cdc.decode import Relation, standby_status, unix_us_to_pg
from bookaudit.classify import one_line, pg_connect_error, pg_transient
from bookaudit.errors import SourceCheckError, TerminalError, TransientError
from bookaudit.model import Row, TableSchema, format_lsn


class Catalog:
    """A plain connection to the source for slot management and relation lookups."""

    def __init__(self, dsn: str) -> None:
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, application_name="bookaudit-capture")
        except psycopg.OperationalError as exc:
            raise pg_connect_error("cannot connect to the source database", exc, dsn) from None

    def close(self) -> None:
        self.conn.close()

    @property
    def dbname(self) -> str:
        return self.conn.info.dbname

    def identity(self) -> str:
        """'<system identifier>/<database name>': the same for every capture of this database
        (and its physical standbys), different for any other database."""
        row = self.conn.execute(
            "SELECT system_identifier::text || '/' || current_database() FROM pg_control_system()"
        ).fetchone()
        assert row is not None
        return str(row[0])

    def check_slot(self, slot: str, publication: str) -> None:
        """The slot `source install` created must be there: the capture never creates one, since
        changes committed before a slot exists are not in its stream."""
        if (
            self.conn.execute(
                "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
            ).fetchone()
            is None
        ):
            raise SourceCheckError(
                f"publication {publication!r} does not exist: run `bookaudit source install` first"
            )
        row = self.conn.execute(
            "SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None:
            raise SourceCheckError(
                f"replication slot {slot!r} does not exist: run `bookaudit source install`, which "
                "creates it and takes a new baseline (changes since a lost slot are a gap)"
            )
        if row[0] != "pgoutput" or row[1] != self.dbname:
            raise SourceCheckError(
                f"slot {slot!r} exists for plugin {row[0]!r} in database {row[1]!r}; "
                f"bookaudit needs pgoutput in {self.dbname!r}: choose another --slot"
            )

    def context_key(self) -> bytes:
        """The key the source signs context messages with; only the install role reads it."""
        try:
            row = self.conn.execute("SELECT key FROM bookaudit.context_key").fetchone()
        except psycopg.errors.UndefinedTable:
            raise SourceCheckError(
                "bookaudit.context_key does not exist: run `bookaudit source install` "
                "(this version signs the actor context)"
            ) from None
        except psycopg.errors.InsufficientPrivilege:
            raise SourceCheckError(
                f"role {self.conn.info.user!r} cannot read bookaudit.context_key: run the "
                "capture as the role that ran `source install`"
            ) from None
        if row is None:
            raise SourceCheckError(
                "bookaudit.context_key is empty: rerun `bookaudit source install`"
            )
        return bytes(row[0])

    def adopt_partitions(self, publication: str) -> list[str]:
        """Give every partition of an audited partitioned table, new ones included, the full old
        row and the context trigger; one line per change made. A partition the role may not
        alter is a SourceCheckError naming it and the command to run."""
        exists = self.conn.execute(
            "SELECT to_regprocedure('bookaudit.adopt_partitions(text)') IS NOT NULL"
        ).fetchone()
        if not (exists and exists[0]):
            return []  # installed before partitioned tables were audited: none is
        try:
            return [
                str(r[0])
                for r in self.conn.execute(
                    "SELECT bookaudit.adopt_partitions(%s)", (publication,)
                ).fetchall()
            ]
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SourceCheckError(str(exc.diag.message_primary)) from None

    def partition_of(self, oid: int) -> str | None:
        """The partitioned table a partition belongs to (its root), None for any other table."""
        row = self.conn.execute(
            "SELECT pg_partition_root(c.oid)::text FROM pg_class c "
            "WHERE c.oid = %s AND c.relispartition",
            (oid,),
        ).fetchone()
        return None if row is None else str(row[0])

    def render(self, table: TableSchema, texts: Mapping[str, str | None]) -> Row:
        """Column texts written in fixed settings (bookaudit._emit_old_row), read through the
        table's types and printed as this session prints them: as pgoutput, in a walsender of
        the same role and database, prints them."""
        query = sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("({}::text)::{}::text").format(sql.Placeholder(), sql.SQL(type_name))
                for type_name in table.types
            )
        )
        row = self.conn.execute(query, [texts.get(c) for c in table.columns]).fetchone()
        assert row is not None
        return {c: None if v is None else str(v) for c, v in zip(table.columns, row, strict=True)}

    def current_lsn(self) -> str:
        row = self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def resolve(self, relation: Relation) -> TableSchema:
        """Type names and the real primary key: pgoutput flags every column as key under FULL."""
        oids = [c.type_oid for c in relation.columns]
        mods = [c.type_modifier for c in relation.columns]
        types = [
            str(r[0])
            for r in self.conn.execute(
                "SELECT format_type(o, m) FROM unnest(%s::oid[], %s::int[]) WITH ORDINALITY "
                "AS x(o, m, n) ORDER BY n",
                (oids, mods),
            )
        ]
        key = self._primary_key(relation.oid)
        if not key:
            key = tuple(c.name for c in relation.columns if c.is_identity)
        return TableSchema(
            oid=relation.oid,
            schema=relation.namespace,
            name=relation.name,
            columns=tuple(c.name for c in relation.columns),
            types=tuple(types),
            key=key,
        )

    def _primary_key(self, oid: int) -> tuple[str, ...]:
        return tuple(
            str(r[0])
            for r in self.conn.execute(
                """
                SELECT a.attname FROM pg_index i
                CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n
                """,
                (oid,),
            )
        )

    def table(self, schema: str, name: str) -> TableSchema | None:
        """The same TableSchema `resolve` builds, looked up by name (trigger mode has no
        Relation message); None when the table no longer exists. Generated columns are left
        out, as pgoutput leaves them out, so both modes record the same columns."""
        row = self.conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if row is None:
            return None
        oid = int(row[0])
        columns = self.conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '' "
            "ORDER BY attnum",
            (oid,),
        ).fetchall()
        return TableSchema(
            oid=oid,
            schema=schema,
            name=name,
            columns=tuple(str(c[0]) for c in columns),
            types=tuple(str(c[1]) for c in columns),
            key=self._primary_key(oid),
        )


_START = sql.SQL(
    "START_REPLICATION SLOT {slot} LOGICAL 0/0 "
    "(proto_version '2', publication_names {publications}, messages 'true')"
)


def start_replication(slot: str, publication: str) -> bytes:
    """The START_REPLICATION command: the slot as an identifier, and the publication as the
    quoted identifier list pgoutput parses out of a string literal."""
    names = sql.Identifier(publication).as_string()
    return _START.format(slot=sql.Identifier(slot), publications=sql.Literal(names)).as_bytes()


class ReplicationStream:
    """START_REPLICATION over libpq's copy protocol (psycopg 3 has no replication API)."""

    def __init__(self, dsn: str) -> None:
        info = make_conninfo(dsn, replication="database", application_name="bookaudit-capture")
        self._pgconn = pq.PGconn.connect(info.encode())
        if self._pgconn.status != pq.ConnStatus.OK:
            message = self._pgconn.get_error_message().strip()
            self._pgconn.finish()
            raise pg_connect_error(
                "cannot open a replication connection", psycopg.OperationalError(message), info
            )

    def start(self, slot: str, publication: str) -> None:
        self._pgconn.send_query(start_replication(slot, publication))
        while True:
            result = self._pgconn.get_result()
            if result is None:
                raise TransientError("server closed the replication stream before COPY")
            if result.status == pq.ExecStatus.COPY_BOTH:
                return
            if result.status == pq.ExecStatus.FATAL_ERROR:
                message = (result.error_message or b"").decode().strip()
                sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
                code = sqlstate.decode() if sqlstate else None
                # 55006: another capture holds the slot, which a retry can outlive.
                raise (TransientError if pg_transient(code) else TerminalError)(
                    f"START_REPLICATION on slot {slot!r} failed: {one_line(message)}"
                    + ("" if pg_transient(code) else f" (SQLSTATE {code})")
                )

    def read(self, timeout: float) -> bytes | None:
        """One CopyData message, or None when none arrived within timeout."""
        deadline = time.monotonic() + timeout
        taken = False
        while True:
            nbytes, data = self._pgconn.get_copy_data(1)
            if nbytes > 0:
                return bytes(data)
            if nbytes < 0:
                message = self._pgconn.get_error_message().strip() or "stream ended"
                raise TransientError(f"replication stream closed: {message}")
            if not taken:
                # What the socket already holds first (libpq's socket never blocks): "nothing"
                # must mean the server sent nothing more, not that libpq's buffer ran dry, or a
                # reader that lingers when little came would linger in the middle of a backlog.
                self._pgconn.consume_input()
                taken = True
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._pgconn.socket], [], [], remaining)
            if not ready:
                return None
            self._pgconn.consume_input()

    def send_status(self, lsn: int, reply_requested: bool = False) -> None:
        now = unix_us_to_pg(time.time_ns() // 1000)
        if self._pgconn.put_copy_data(standby_status(lsn, now, reply_requested)) != 1:
            raise TransientError(
                f"cannot confirm LSN {format_lsn(lsn)}: {self._pgconn.get_error_message()}"
            )
        self._pgconn.flush()

    def close(self) -> None:
        self._pgconn.finish()
