"""Plans and applies the source install: context API, statement triggers, publication, FULL identity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bookaudit._resources import read_text
from bookaudit.errors import SourceCheckError

TRIGGER_NAME = "bookaudit_context"


@dataclass(frozen=True)
class TableName:
    """A schema-qualified table as the user named it."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        parts = text.split(".")
        if len(parts) == 1 and parts[0]:
            return cls("public", parts[0])
        if len(parts) == 2 and all(parts):
            return cls(parts[0], parts[1])
        raise SourceCheckError(f"--table {text!r}: expected 'schema.table' or 'table'")

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def check_source(conn: psycopg.Connection[tuple[object, ...]], tables: Sequence[TableName]) -> None:
    """Refuse early, naming the culprit, rather than fail halfway through the install."""
    wal_level = conn.execute("SHOW wal_level").fetchone()
    if wal_level is None or wal_level[0] != "logical":
        level = wal_level[0] if wal_level else "?"
        raise SourceCheckError(
            f"wal_level is {level!r}, not 'logical': set wal_level = logical and restart PostgreSQL"
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


def _published(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> set[TableName]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
        (publication,),
    ).fetchall()
    return {TableName(str(s), str(t)) for s, t in rows}


def _publication_exists(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
        is not None
    )


def plan_install(
    conn: psycopg.Connection[tuple[object, ...]], tables: Sequence[TableName], publication: str
) -> list[sql.Composable]:
    """Every statement the install needs, given what is already there (so a rerun is a no-op)."""
    check_source(conn, tables)
    statements: list[sql.Composable] = [sql.SQL(read_text("sql", "source", "001_context.sql"))]
    for table in tables:
        statements.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table.ident()))
        statements.append(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION bookaudit.emit_context()"
            ).format(sql.Identifier(TRIGGER_NAME), table.ident())
        )
    pub = sql.Identifier(publication)
    table_list = sql.SQL(", ").join(t.ident() for t in tables)
    if not _publication_exists(conn, publication):
        statements.append(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, table_list))
    else:
        missing = [t for t in tables if t not in _published(conn, publication)]
        if missing:
            statements.append(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    pub, sql.SQL(", ").join(t.ident() for t in missing)
                )
            )
    return statements


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
    for table in sorted(_published(conn, publication), key=str):
        statements.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY DEFAULT").format(table.ident()))
        statements.append(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(TRIGGER_NAME), table.ident()
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
