"""Plans and applies the source install: context API and triggers, plus the publication (logical
mode) or the outbox (trigger mode)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bookaudit._resources import read_text
from bookaudit.errors import SourceCheckError
from bookaudit.model import MODES, OUTBOX_TRIGGER

TRIGGER_NAME = "bookaudit_context"
TRUNCATE_TRIGGER = "0_bookaudit_truncate"
# On a partitioned table, around each UPDATE: a row moving between partitions is one update.
MOVES_BEGIN = "bookaudit_moves_begin"
MOVES_END = "bookaudit_moves_end"
# Logical mode, on a partitioned table, cloned to its partitions: the old row and the context of a
# partition not yet adopted. Named to fire after the application's BEFORE ROW triggers.
PARTITION_TRIGGER = "zz_bookaudit_partition"
SET_ACTOR = "bookaudit.set_actor(text, text, text, text, text)"


def _split_name(text: str) -> list[str] | None:
    """Dot-separated parts, a part starting with `"` read as a quoted identifier."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    return None
                if text[j] == '"':
                    if text[j + 1 : j + 2] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    j += 1
                    break
                buf.append(text[j])
                j += 1
            parts.append("".join(buf))
        else:
            j = text.find(".", i)
            j = n if j < 0 else j
            parts.append(text[i:j])
        i = j
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1


@dataclass(frozen=True)
class TableName:
    """A schema-qualified table as the user named it."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        """`table`, `schema.table`, or either part in double quotes as SQL writes it, for a name
        holding a dot (`public."a.b"`, with `""` for a quote inside). Names are taken as written,
        never case-folded."""
        parts = _split_name(text)
        if parts is None:
            raise SourceCheckError(
                f"--table {text!r}: an unterminated or misplaced double quote; write a name "
                'with a dot as public."a.b", a quote inside quotes as ""'
            )
        if len(parts) == 1 and parts[0]:
            return cls("public", parts[0])
        if len(parts) == 2 and all(parts):
            return cls(parts[0], parts[1])
        raise SourceCheckError(f"--table {text!r}: expected 'schema.table' or 'table'")

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


GAPS_TABLE = TableName("bookaudit", "capture_gaps")


def check_source(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Sequence[TableName],
    mode: str = "logical",
) -> None:
    """Refuse early, naming the culprit, rather than fail halfway through the install."""
    if mode not in MODES:
        raise SourceCheckError(f"mode {mode!r} is neither 'logical' nor 'trigger'")
    if mode == "logical":
        wal_level = conn.execute("SHOW wal_level").fetchone()
        if wal_level is None or wal_level[0] != "logical":
            level = wal_level[0] if wal_level else "?"
            raise SourceCheckError(
                f"wal_level is {level!r}, not 'logical': set wal_level = logical and restart "
                "PostgreSQL, or install with --mode trigger"
            )
    else:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'hstore'"
        ).fetchone()
        if available is None:
            raise SourceCheckError(
                "trigger mode needs the hstore extension, which this server lacks: "
                "install PostgreSQL's contrib package"
            )
    if not tables:
        raise SourceCheckError("no table to audit: pass --table schema.table at least once")
    can_create = conn.execute(
        "SELECT has_database_privilege(current_database(), 'CREATE')"
    ).fetchone()
    if not (can_create and can_create[0]):
        raise SourceCheckError(
            "role lacks CREATE on this database: needed for the bookaudit schema and publication"
        )
    for table in tables:
        row = conn.execute(
            """
            SELECT c.oid, pg_has_role(current_user, c.relowner, 'USAGE'),
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
            """,
            (table.schema, table.name),
        ).fetchone()
        if row is None:
            raise SourceCheckError(f"table {table} does not exist")
        if not row[1]:
            raise SourceCheckError(
                f"role {conn.info.user!r} does not own table {table}: "
                "REPLICA IDENTITY and triggers need the owner"
            )
        if not row[2]:
            raise SourceCheckError(
                f"table {table} has no primary key: bookaudit keys every event by it"
            )


def partitioned_oid(conn: psycopg.Connection[tuple[object, ...]], table: TableName) -> int | None:
    """The oid of a partitioned table, None for a plain one."""
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'p'",
        (table.schema, table.name),
    ).fetchone()
    return None if row is None else int(str(row[0]))


def _partitions(conn: psycopg.Connection[tuple[object, ...]], table: TableName) -> list[TableName]:
    """Every partition under a partitioned table, sub-partitions included."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_partition_tree(%s::regclass) t "
        "JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.level > 0 ORDER BY t.level, n.nspname, c.relname",
        (table.ident().as_string(conn),),
    ).fetchall()
    return [TableName(str(s), str(t)) for s, t in rows]


def _move_triggers(table: TableName, function: str) -> list[sql.Composable]:
    """BEFORE and AFTER each UPDATE of a partitioned table, `function` with 'begin' and 'end'."""
    return [
        sql.SQL(
            "CREATE OR REPLACE TRIGGER {} {} UPDATE ON {} FOR EACH STATEMENT "
            "EXECUTE FUNCTION {}({})"
        ).format(
            sql.Identifier(name), sql.SQL(when), table.ident(), sql.SQL(function),
            sql.Literal(note),
        )
        for name, when, note in ((MOVES_BEGIN, "BEFORE", "begin"), (MOVES_END, "AFTER", "end"))
    ]  # fmt: skip


def _adopt_partitions(publication: str) -> sql.Composable:
    """Every partition's identity and context trigger (sql/source/001_context.sql)."""
    return sql.SQL("SELECT bookaudit.adopt_partitions({})").format(sql.Literal(publication))


def _published(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> set[TableName]:
    """The tables the publication names, as install added them (pg_publication_tables would
    list a partitioned table's partitions instead, unless it publishes via the root)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel r "
        "JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s",
        (publication,),
    ).fetchall()
    return {TableName(str(s), str(t)) for s, t in rows}


def _publication_exists(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
        is not None
    )


def installed_mode(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> str | None:
    """Which mode this database is audited in now, if any."""
    outbox = conn.execute("SELECT to_regclass('bookaudit.outbox') IS NOT NULL").fetchone()
    if outbox and outbox[0]:
        return "trigger"
    return "logical" if _publication_exists(conn, publication) else None


def plan_install(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Sequence[TableName],
    publication: str,
    mode: str = "logical",
    grant_to: Sequence[str] = (),
) -> list[sql.Composable]:
    """Every statement the install needs, given what is already there (so a rerun is a no-op)."""
    check_source(conn, tables, mode)
    return _plan_hooks(conn, tables, publication, mode) + plan_grants(conn, grant_to)


def plan_grants(
    conn: psycopg.Connection[tuple[object, ...]], roles: Sequence[str]
) -> list[sql.Composable]:
    """What an application role needs: nothing to write audited tables (every bookaudit trigger
    is SECURITY DEFINER), and USAGE plus EXECUTE on set_actor to name its user by function."""
    statements: list[sql.Composable] = []
    for role in roles:
        if role.upper() == "PUBLIC":
            grantee: sql.Composable = sql.SQL("PUBLIC")
        elif conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            grantee = sql.Identifier(role)
        else:
            raise SourceCheckError(f"--grant-to {role!r}: no such role in this server")
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA bookaudit TO {}").format(grantee))
        statements.append(
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(SET_ACTOR), grantee)
        )
    return statements


def _plan_hooks(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Sequence[TableName],
    publication: str,
    mode: str,
) -> list[sql.Composable]:
    current = installed_mode(conn, publication)
    if current is not None and current != mode:
        raise SourceCheckError(
            f"this database is audited in {current} mode: run `bookaudit source uninstall` "
            f"(after the capture drained it) before installing {mode} mode"
        )
    statements: list[sql.Composable] = [
        sql.SQL(read_text("sql", "source", "001_context.sql")),
        sql.SQL(read_text("sql", "source", "004_audit_start.sql")),
    ]
    if mode == "trigger":
        return statements + _plan_outbox(conn, tables)
    statements.append(sql.SQL(read_text("sql", "source", "003_capture_state.sql")))
    statements.append(sql.SQL(read_text("sql", "source", "005_partitions.sql")))
    partitioned = False
    for table in tables:
        statements.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table.ident()))
        statements.append(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION bookaudit.emit_context()"
            ).format(sql.Identifier(TRIGGER_NAME), table.ident())
        )
        oid = partitioned_oid(conn, table)
        if oid is not None:
            partitioned = True
            statements.extend(_move_triggers(table, "bookaudit.emit_moves"))
            statements.append(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION bookaudit.partition_row({})"
                ).format(sql.Identifier(PARTITION_TRIGGER), table.ident(), sql.Literal(str(oid)))
            )
    pub = sql.Identifier(publication)
    # Accepted gaps travel the pipeline like any change (sql/source/003_capture_state.sql).
    published = [*tables, GAPS_TABLE]
    table_list = sql.SQL(", ").join(t.ident() for t in published)
    # Via the root, a partition's changes name the table the user audits, in its columns, and
    # pgoutput sends each partition's own relation (with its replica identity) before them.
    if not _publication_exists(conn, publication):
        statements.append(
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)"
            ).format(pub, table_list)
        )
    else:
        if not _publishes_via_root(conn, publication):
            statements.append(
                sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(pub)
            )
        missing = [t for t in published if t not in _published(conn, publication)]
        if missing:
            statements.append(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    pub, sql.SQL(", ").join(t.ident() for t in missing)
                )
            )
    if partitioned or _publishes_partitioned(conn, publication):
        statements.append(_adopt_partitions(publication))
    return statements


def _publishes_via_root(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> bool:
    row = conn.execute(
        "SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    return bool(row and row[0])


def _publishes_partitioned(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> bool:
    """Whether a partitioned table is audited already (its new partitions want adopting)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p "
        "ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid "
        "WHERE p.pubname = %s AND c.relkind = 'p')",
        (publication,),
    ).fetchone()
    return bool(row and row[0])


def _hstore_schema(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'hstore'"
    ).fetchone()
    return None if row is None else str(row[0])


def _plan_outbox(
    conn: psycopg.Connection[tuple[object, ...]], tables: Sequence[TableName]
) -> list[sql.Composable]:
    """Trigger mode: no publication, no slot, no REPLICA IDENTITY; an outbox and its triggers."""
    statements: list[sql.Composable] = []
    hstore = _hstore_schema(conn)
    if hstore is None:
        # Inside our schema, so that uninstall's DROP SCHEMA takes it away again.
        hstore = "bookaudit"
        statements.append(sql.SQL("CREATE EXTENSION hstore WITH SCHEMA bookaudit"))
    statements.append(
        sql.SQL(read_text("sql", "source", "002_outbox.sql")).format(hstore=sql.Identifier(hstore))
    )
    partitioned = False
    for table in tables:
        # A partitioned table passes its oid to the row trigger its partitions clone, so that
        # a partition's row is recorded as the partitioned table's (sql/source/002_outbox.sql).
        oid = partitioned_oid(conn, table)
        root: sql.Composable = sql.SQL("") if oid is None else sql.Literal(str(oid))
        statements.append(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION bookaudit.record_context({})"
            ).format(sql.Identifier(TRIGGER_NAME), table.ident(), root)
        )
        statements.append(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} "
                "FOR EACH ROW EXECUTE FUNCTION bookaudit.outbox_row({})"
            ).format(sql.Identifier(OUTBOX_TRIGGER), table.ident(), root)
        )
        if oid is not None:
            partitioned = True
            statements.extend(_move_triggers(table, "bookaudit.note_moves"))
        statements.append(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} AFTER TRUNCATE ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION bookaudit.outbox_row()"
            ).format(sql.Identifier(TRUNCATE_TRIGGER), table.ident())
        )
    if partitioned:
        statements.append(_adopt_partitions(""))
    return statements


def _bookaudit_triggers(
    conn: psycopg.Connection[tuple[object, ...]],
) -> list[tuple[str, TableName]]:
    """Every trigger on a user table that calls a bookaudit function, in either mode."""
    rows = conn.execute(
        """
        SELECT t.tgname, n.nspname, c.relname FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
        WHERE pn.nspname = 'bookaudit' AND n.nspname <> 'bookaudit' AND NOT t.tgisinternal
          AND t.tgparentid = 0  -- a partition's clone goes with its partitioned table's trigger
        ORDER BY 2, 3, 1
        """
    ).fetchall()
    return [(str(name), TableName(str(s), str(t))) for name, s, t in rows]


def plan_uninstall(
    conn: psycopg.Connection[tuple[object, ...]], publication: str, slot: str
) -> list[sql.Composable]:
    """Drop the slot first: a forgotten slot makes the source keep WAL forever."""
    statements: list[sql.Composable] = []
    slot_row = conn.execute(
        "SELECT active FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()",
        (slot,),
    ).fetchone()
    if slot_row is not None:
        if slot_row[0]:
            raise SourceCheckError(
                f"replication slot {slot!r} is in use: stop bookaudit capture first"
            )
        statements.append(sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(slot)))
    if installed_mode(conn, publication) == "trigger":
        pending = conn.execute("SELECT count(*) FROM bookaudit.outbox").fetchone()
        if pending and pending[0]:
            raise SourceCheckError(
                f"bookaudit.outbox still holds {pending[0]} changes not yet in Kafka: "
                "run `bookaudit capture --mode trigger --exit-when-idle` first"
            )
    for table in sorted(_published(conn, publication), key=str):
        for each in (table, *_partitions(conn, table)):
            statements.append(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY DEFAULT").format(each.ident())
            )
    for trigger, table in _bookaudit_triggers(conn):
        statements.append(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(trigger), table.ident()
            )
        )
    statements.append(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
    statements.append(sql.SQL(read_text("sql", "source", "uninstall.sql")))
    return statements


def render(
    conn: psycopg.Connection[tuple[object, ...]], statements: Sequence[sql.Composable]
) -> str:
    return "\n".join(s.as_string(conn).rstrip().rstrip(";") + ";" for s in statements)


def apply(
    conn: psycopg.Connection[tuple[object, ...]],
    statements: Sequence[sql.Composable],
    progress: Callable[[str], None] = lambda _msg: None,
) -> None:
    """All or nothing: one transaction, so a refused statement leaves the source as it was."""
    try:
        with conn.transaction():
            for statement in statements:
                text = statement.as_string(conn)
                progress(text.strip().splitlines()[0][:100])
                conn.execute(text.encode())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceCheckError(f"privileges are lacking: {exc.diag.message_primary}") from None
