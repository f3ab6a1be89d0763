"""Where the audit starts: the slot (logical) or the outbox boundary (trigger), and the baseline
of existing rows staged under the same snapshot for the capture to relay.

Logical mode creates the pgoutput slot with an exported snapshot and, while the replication
connection holds it, copies each audited table into `bookaudit.baseline_<n>` in one REPEATABLE
READ transaction that imported it: a change committed after the slot's consistent point is in
the stream and not in the copy, and one committed before is in the copy and not in the stream.
Trigger mode takes the same cut with the commit-order lock that numbers outbox transactions:
while it is held no transaction is between numbering and visibility, so the snapshot sees
exactly the numbers up to the sequence's current value; those outbox rows are in the copy and
are deleted with it, and every later number is relayed.

The copy is the only thing done under the snapshot, so no transaction stays open while events
go to Kafka; the capture relays the copy later, chunk by chunk, recording what Kafka
acknowledged in `bookaudit.baseline.sent`, so a kill -9 resumes after the last acknowledged
chunk (the warehouse drops the few repeats on their identity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from bookaudit.config import SNAPSHOTS
from bookaudit.errors import SourceCheckError
from bookaudit.model import BASELINE_SEQ_COLUMN
from bookaudit.source.install import TableName, apply, plan_install

# pg_advisory lock key of the trigger-mode commit order (see 002_outbox.sql register_commit).
COMMIT_ORDER_LOCK = (1651204468, 1)
# SQLSTATEs of CREATE_REPLICATION_SLOT failures a user can act on.
_NO_FREE_SLOT = "53400"  # configuration_limit_exceeded: all replication slots are in use
_NO_PRIVILEGE = "42501"  # insufficient_privilege: the role lacks REPLICATION


@dataclass(frozen=True)
class AuditStart:
    """What `source install` reports: from where every committed change is audited."""

    mode: str
    complete_from: str  # "LSN 0/1A2B3C" or "commit 123456"
    started_at: datetime | None
    baseline_rows: int
    created: bool  # False when an earlier install had already started the audit

    def describe(self) -> str:
        when = "" if self.started_at is None else f" ({self.started_at.isoformat(' ', 'seconds')})"
        head = f"audit complete from {self.complete_from}{when}"
        if not self.created:
            return head + ", as an earlier install started it"
        if self.baseline_rows:
            return head + f"; {self.baseline_rows} existing rows staged as the baseline"
        return head


def _slot_row(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> tuple[object, ...] | None:
    return conn.execute(
        "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    ).fetchone()


def check_replication(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
    """Logical mode, before anything is changed: the role may replicate and a slot is free."""
    row = conn.execute(
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not (row and row[0]):
        raise SourceCheckError(
            f"role {conn.info.user!r} lacks REPLICATION, which logical mode needs for its slot: "
            f"ALTER ROLE {conn.info.user} REPLICATION, or install with --mode trigger"
        )
    found = _slot_row(conn, slot)
    if found is not None:
        if found[0] != "pgoutput" or found[1] != conn.info.dbname:
            raise SourceCheckError(
                f"slot {slot!r} exists for plugin {found[0]!r} in database {found[1]!r}; "
                f"bookaudit needs pgoutput in {conn.info.dbname!r}: choose another --slot"
            )
        return
    free = conn.execute(
        "SELECT current_setting('max_replication_slots')::int, count(*) FROM pg_replication_slots"
    ).fetchone()
    assert free is not None
    if int(str(free[1])) >= int(str(free[0])):
        raise SourceCheckError(_no_free_slot(int(str(free[0]))))


def _no_free_slot(limit: int | None) -> str:
    where = "" if limit is None else f" (max_replication_slots = {limit})"
    return (
        f"no replication slot is free{where}: drop an unused slot "
        "(pg_drop_replication_slot) or raise max_replication_slots"
    )


def planned_start(
    conn: psycopg.Connection[tuple[object, ...]], slot: str, mode: str, snapshot: str
) -> list[str]:
    """For --dry-run: what the install would do after its SQL, in words."""
    present = conn.execute("SELECT to_regclass('bookaudit.audit_start') IS NOT NULL").fetchone()
    recorded = _recorded(conn) if present and present[0] else None
    if mode == "logical" and _slot_row(conn, slot) is not None:
        return [f"keep replication slot {slot!r}: the audit has started"]
    if mode == "trigger" and recorded is not None and recorded[0] == "ready":
        return ["keep the outbox: the audit has started"]
    steps = []
    if mode == "logical":
        steps.append(
            f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput EXPORT_SNAPSHOT '
            "on a replication connection"
        )
    else:
        steps.append("take the commit-order lock and a snapshot: the audit starts there")
    if snapshot == "initial":
        steps.append("copy each table under that snapshot into bookaudit.baseline_<n>")
    return steps


def _recorded(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[object, ...] | None:
    return conn.execute(
        "SELECT state, complete_from, started_at, baseline_rows FROM bookaudit.audit_start"
    ).fetchone()


def start_audit(
    dsn: str,
    tables: Sequence[TableName],
    *,
    mode: str,
    slot: str,
    snapshot: str = "initial",
    progress: Callable[[str], None] = lambda _m: None,
) -> AuditStart:
    """Start the audit once: later installs keep the slot (or boundary) and report it."""
    if snapshot not in SNAPSHOTS:
        raise SourceCheckError(f"--snapshot {snapshot!r} is neither 'initial' nor 'never'")
    with psycopg.connect(dsn, autocommit=True, application_name="bookaudit-install") as conn:
        recorded = _recorded(conn)
        existing = _slot_row(conn, slot) if mode == "logical" else None
        ready = recorded is not None and recorded[0] == "ready"
        if ready and (mode == "trigger" or existing is not None):
            assert recorded is not None
            return _from_row(mode, recorded)
        if mode == "logical" and existing is not None:
            if recorded is None:
                # A slot an earlier bookaudit version's capture created: it already holds the
                # stream, so the audit started there and there is no baseline to take.
                return AuditStart(mode, f"LSN {existing[2]}", None, 0, created=False)
            # An install killed before its baseline was staged: take the slot and copy again.
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        _check_seq_column(conn, tables)
        conn.execute(
            "INSERT INTO bookaudit.audit_start (state, mode) VALUES ('creating', %s) "
            "ON CONFLICT (one) DO UPDATE SET state = 'creating', mode = EXCLUDED.mode",
            (mode,),
        )
    if mode == "logical":
        return _start_logical(dsn, tables, slot, snapshot == "initial", progress)
    return _start_trigger(dsn, tables, snapshot == "initial", progress)


def _from_row(mode: str, row: tuple[object, ...]) -> AuditStart:
    started = row[2] if isinstance(row[2], datetime) else None
    return AuditStart(mode, str(row[1]), started, int(str(row[3])), created=False)


def _check_seq_column(
    conn: psycopg.Connection[tuple[object, ...]], tables: Sequence[TableName]
) -> None:
    for table in tables:
        clash = conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            (str(table.ident().as_string(conn)), BASELINE_SEQ_COLUMN),
        ).fetchone()
        if clash is not None:
            raise SourceCheckError(
                f"table {table} has a column named {BASELINE_SEQ_COLUMN}, which bookaudit reserves"
            )


def _start_logical(
    dsn: str,
    tables: Sequence[TableName],
    slot: str,
    baseline: bool,
    progress: Callable[[str], None],
) -> AuditStart:
    info = make_conninfo(dsn, replication="database", application_name="bookaudit-install")
    repl = pq.PGconn.connect(info.encode())
    try:
        if repl.status != pq.ConnStatus.OK:
            message = " ".join(repl.get_error_message().split())
            raise SourceCheckError(f"cannot open a replication connection for the slot: {message}")
        with psycopg.connect(dsn, application_name="bookaudit-install") as conn:
            # Every change the slot streams commits after this instant, so baseline rows carrying
            # it sort before them in any history ordered by commit time.
            started = _now(conn)
            conn.commit()
            # Identifiers in replication commands cannot go through psycopg.sql; Config admits
            # only [a-z0-9_] slot names, so quoting here is safe.
            export = "EXPORT_SNAPSHOT" if baseline else "NOEXPORT_SNAPSHOT"
            result = repl.exec_(
                f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput {export}'.encode()
            )
            if result.status != pq.ExecStatus.TUPLES_OK:
                raise _slot_error(slot, result)
            consistent = (result.get_value(0, 1) or b"").decode()
            snapshot_name = (result.get_value(0, 2) or b"").decode()
            progress(f"created slot {slot!r}, consistent at LSN {consistent}")
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                if baseline:
                    conn.execute(
                        sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
                    )
                    rows = _stage(conn, tables, progress)
                else:
                    rows = 0
                # Below the consistent point, where no streamed transaction can commit.
                position = _lsn_int(consistent) - 1
                _mark_ready(conn, f"LSN {consistent}", position, started, rows)
                conn.commit()
            except BaseException:
                conn.rollback()
                repl.exec_(f'DROP_REPLICATION_SLOT "{slot}"'.encode())
                raise
    finally:
        # Closing the replication connection ends the exported snapshot; the slot stays.
        repl.finish()
    return AuditStart("logical", f"LSN {consistent}", started, rows, created=True)


def _slot_error(slot: str, result: pq.abc.PGresult) -> SourceCheckError:
    state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    message = " ".join((result.error_message or b"").decode(errors="replace").split())
    if state == _NO_FREE_SLOT:
        return SourceCheckError(_no_free_slot(None))
    if state == _NO_PRIVILEGE:
        return SourceCheckError(
            f"cannot create slot {slot!r}: the role lacks REPLICATION (or install with --mode trigger)"
        )
    return SourceCheckError(f"cannot create slot {slot!r}: {message}")


def _start_trigger(
    dsn: str, tables: Sequence[TableName], baseline: bool, progress: Callable[[str], None]
) -> AuditStart:
    with psycopg.connect(dsn, application_name="bookaudit-install") as conn:
        conn.autocommit = True
        # Held across the snapshot: no transaction is then between taking its commit number and
        # becoming visible, so the snapshot sees every number up to the sequence's value and none
        # above it. Committers wait only for the few statements below.
        conn.execute("SELECT pg_advisory_lock(%s, %s)", COMMIT_ORDER_LOCK)
        conn.autocommit = False
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            cut = conn.execute(
                "SELECT clock_timestamp(), last_value FROM bookaudit.commit_seq"
            ).fetchone()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", COMMIT_ORDER_LOCK)
        assert cut is not None and isinstance(cut[0], datetime)
        started, position = cut[0], int(str(cut[1]))
        rows = 0
        if baseline:
            rows = _stage(conn, tables, progress)
            # Transactions numbered up to the cut are in the copy; relaying them as well would
            # show their changes twice.
            conn.execute(
                "DELETE FROM bookaudit.outbox WHERE txid IN "
                "(SELECT txid FROM bookaudit.outbox_commits WHERE commit_seq <= %s)",
                (position,),
            )
            conn.execute("DELETE FROM bookaudit.outbox_commits WHERE commit_seq <= %s", (position,))
        _mark_ready(conn, f"commit {position + 1}", position, started, rows)
        conn.commit()
    return AuditStart("trigger", f"commit {position + 1}", started, rows, created=True)


def _now(conn: psycopg.Connection[tuple[object, ...]]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def _lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _primary_key(conn: psycopg.Connection[tuple[object, ...]], table: TableName) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            """
            SELECT a.attname FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n
            """,
            (table.ident().as_string(conn),),
        )
    ]


def _columns(conn: psycopg.Connection[tuple[object, ...]], table: TableName) -> list[str]:
    """Generated columns stay out, as pgoutput leaves them out of the stream."""
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (table.ident().as_string(conn),),
        )
    ]


def _stage(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Sequence[TableName],
    progress: Callable[[str], None],
) -> int:
    """Copy each table, numbered in key order, inside the caller's snapshot transaction."""
    conn.execute("DELETE FROM bookaudit.baseline")
    first = 0
    for position, table in enumerate(tables, start=1):
        staging = f"baseline_{position}"
        key = _primary_key(conn, table)
        columns = _columns(conn, table)
        target = sql.Identifier("bookaudit", staging)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {target} AS SELECT row_number() OVER (ORDER BY {key}) AS {seq}, "
                "{columns} FROM {table}"
            ).format(
                target=target,
                key=sql.SQL(", ").join(map(sql.Identifier, key)),
                seq=sql.Identifier(BASELINE_SEQ_COLUMN),
                columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
                table=table.ident(),
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                target, sql.Identifier(BASELINE_SEQ_COLUMN)
            )
        )
        counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()
        rows = int(str(counted[0])) if counted else 0
        conn.execute(
            "INSERT INTO bookaudit.baseline (position, schema_name, table_name, staging, "
            "key_columns, first_sequence, rows) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (position, table.schema, table.name, staging, key, first, rows),
        )
        progress(f"baseline: {table} has {rows} existing rows, staged as bookaudit.{staging}")
        first += rows
    return first


def _mark_ready(
    conn: psycopg.Connection[tuple[object, ...]],
    complete_from: str,
    position: int,
    started: datetime,
    rows: int,
) -> None:
    conn.execute(
        "UPDATE bookaudit.audit_start SET state = 'ready', complete_from = %s, position = %s, "
        "started_at = %s, baseline_rows = %s",
        (complete_from, position, started, rows),
    )


def pending_install(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """An install is still taking the baseline (or died doing so): the capture must wait."""
    present = conn.execute("SELECT to_regclass('bookaudit.audit_start') IS NOT NULL").fetchone()
    if not (present and present[0]):
        return False
    row = conn.execute("SELECT state FROM bookaudit.audit_start").fetchone()
    return row is not None and row[0] == "creating"


def install(
    dsn: str,
    tables: Sequence[TableName],
    *,
    publication: str,
    slot: str,
    mode: str,
    snapshot: str = "initial",
    grant_to: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _m: None,
) -> AuditStart:
    """`source install` whole: check, apply the hooks in one transaction, then start the audit.
    `grant_to` names the application roles that may call set_actor (see plan_grants).

    The slot comes after the publication has committed: pgoutput reads the publication as of
    each change, so a slot older than its publication could not decode the changes between.
    """
    names = list(tables)
    with psycopg.connect(dsn, autocommit=True, application_name="bookaudit-install") as conn:
        if mode == "logical":
            check_replication(conn, slot)
        apply(conn, plan_install(conn, names, publication, mode, grant_to), progress)
    return start_audit(dsn, names, mode=mode, slot=slot, snapshot=snapshot, progress=progress)
