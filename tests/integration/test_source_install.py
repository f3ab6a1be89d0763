"""`bookaudit source install`: idempotent, dry-run changes nothing, refusals name the culprit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import DeserializingConsumer

from bookaudit.cdc.relay import OutboxRelay
from bookaudit.cdc.settings import CaptureSettings
from bookaudit.errors import SourceCheckError
from bookaudit.kafka.serde import EnvelopeDeserializer
from bookaudit.model import Envelope
from bookaudit.source.install import TableName, apply, check_source, plan_install
from devstack import StackEnv
from tests.integration.harness import Pipeline, private_server
from tests.integration.workloads import NAMED_CUSTOMER, add_customer


def _state(p: Pipeline) -> tuple[object, ...]:
    with psycopg.connect(p.source_dsn) as conn:
        return (
            conn.execute(
                "SELECT relname, relreplident FROM pg_class WHERE relname IN (%s, %s) ORDER BY relname",
                (p.schema.names["bookings"], p.schema.names["customers"]),
            ).fetchall(),
            conn.execute(
                "SELECT tgrelid::regclass::text FROM pg_trigger "
                "WHERE tgname = 'bookaudit_context' ORDER BY 1"
            ).fetchall(),
            conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = 'bookaudit' ORDER BY 1"
            ).fetchall(),
            conn.execute(
                "SELECT tgrelid::regclass::text FROM pg_trigger "
                "WHERE tgname = '0_bookaudit_outbox' ORDER BY 1"
            ).fetchall(),
        )


def _captures(p: Pipeline, table: str) -> bool:
    """Logical mode publishes the table with its full old row; trigger mode gives it the outbox
    trigger and leaves its replica identity alone."""
    with psycopg.connect(p.source_dsn) as conn:
        row = conn.execute(
            "SELECT c.relreplident, "
            "EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = 'bookaudit' "
            "        AND t.tablename = c.relname), "
            "EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid "
            "        AND g.tgname = '0_bookaudit_outbox') "
            "FROM pg_class c WHERE c.relname = %s",
            (table,),
        ).fetchone()
    expected = ("f", True, False) if p.mode == "logical" else ("d", False, True)
    return row == expected


def test_install_is_idempotent_and_adds_new_tables(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    bookings, customers = pipeline.schema.bookings_table, pipeline.schema.customers_table
    installed = _state(pipeline)
    assert _captures(pipeline, bookings.name)
    # Named as written in the schema's install, and with its schema spelled out or not.
    unqualified = customers.name if customers.schema == "public" else str(customers)
    pipeline.cli("source", "install", "--table", str(bookings), "--table", unqualified)
    assert _state(pipeline) == installed

    lines = f"{bookings.schema}.booking_lines"
    with pipeline.owner() as conn:
        conn.execute(f"CREATE TABLE {lines} (booking_ref text, line int, memo text, "
                     "PRIMARY KEY (booking_ref, line))")  # fmt: skip
    assert not _captures(pipeline, "booking_lines")
    pipeline.cli("source", "install", "--table", lines)
    assert _captures(pipeline, "booking_lines")


def test_dry_run_prints_the_sql_and_changes_nothing(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    where = pipeline.schema.bookings_table.schema
    with pipeline.owner() as conn:
        conn.execute(f"CREATE TABLE {where}.extras (id int PRIMARY KEY, label text)")
    before = _state(pipeline)
    out = pipeline.cli("source", "install", "--table", f"{where}.extras", "--dry-run").stdout
    if pipeline.mode == "logical":
        assert f'ALTER TABLE "{where}"."extras" REPLICA IDENTITY FULL;' in out
        assert f'ALTER PUBLICATION "bookaudit" ADD TABLE "{where}"."extras";' in out
    else:
        assert (
            f'TRIGGER "0_bookaudit_outbox" AFTER INSERT OR UPDATE OR DELETE ON "{where}"."extras"'
            in out
        )
        assert "PUBLICATION" not in out and "REPLICA IDENTITY" not in out
    assert "CREATE OR REPLACE FUNCTION bookaudit.set_actor" in out
    assert _state(pipeline) == before
    with psycopg.connect(pipeline.source_dsn) as conn:
        identity = conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'extras'")
        assert identity.fetchone() == ("d",)


@pytest.mark.parametrize(
    ("setup", "table", "message"),
    [
        ("", "public.nope", "table public.nope does not exist"),
        ("CREATE TABLE keyless (a int)", "keyless", "table public.keyless has no primary key"),
        ("", "a.b.c", "expected 'schema.table' or 'table'"),
        (
            "CREATE TABLE stays (id int, night date) PARTITION BY RANGE (night); "
            "CREATE TABLE stays_1 PARTITION OF stays FOR VALUES FROM ('2026-01-01') TO (MAXVALUE)",
            "stays",
            "table public.stays has no primary key",
        ),
    ],
)
def test_refusals_are_one_line_and_name_the_table(
    pipeline: Pipeline, setup: str, table: str, message: str
) -> None:
    if setup:
        with pipeline.owner() as conn:
            conn.execute(setup)
    result = pipeline.cli("source", "install", "--table", table, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bookaudit: error: ") and message in lines[0]


def test_non_owner_is_refused_for_lack_of_privileges(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    bookings = pipeline.schema.bookings_table
    role = f"{pipeline.name}_clerk"
    with psycopg.connect(pipeline.source_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT CREATE ON DATABASE "{pipeline.name}_src" TO "{role}"')
    try:
        clerk_dsn = psycopg.conninfo.make_conninfo(pipeline.source_dsn, user=role)
        with (
            psycopg.connect(clerk_dsn) as conn,
            pytest.raises(SourceCheckError, match=f"role '{role}' does not own table {bookings}"),
        ):
            check_source(conn, [TableName.parse(str(bookings))])
    finally:
        with psycopg.connect(pipeline.source_dsn, autocommit=True) as conn:
            conn.execute(f'REVOKE ALL ON DATABASE "{pipeline.name}_src" FROM "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def replica_level_server() -> Iterator[str]:
    """A second real server with wal_level=replica, as many managed databases run."""
    with private_server({"wal_level": "replica"}) as dsn:
        yield dsn


def test_wal_level_other_than_logical_is_refused(replica_level_server: str) -> None:
    with psycopg.connect(replica_level_server, autocommit=True) as conn:
        conn.execute("CREATE TABLE bookings (id int PRIMARY KEY)")
        with pytest.raises(SourceCheckError, match="wal_level is 'replica', not 'logical'"):
            check_source(conn, [TableName.parse("bookings")])


def test_trigger_mode_captures_where_wal_level_is_not_logical(
    replica_level_server: str, stack: StackEnv
) -> None:
    """The reason trigger mode exists: the same events from a server without logical decoding."""
    with psycopg.connect(replica_level_server, autocommit=True) as conn:
        conn.execute("CREATE TABLE bookings (id int PRIMARY KEY, price numeric(12, 2))")
        tables = [TableName.parse("bookings")]
        apply(conn, plan_install(conn, tables, "bookaudit", "trigger"))
    with psycopg.connect(replica_level_server) as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        conn.execute("INSERT INTO bookings VALUES (1, 149.90)")
        conn.execute("UPDATE bookings SET price = 189.50 WHERE id = 1")
    prefix = "replica" + uuid.uuid4().hex[:8]
    settings = CaptureSettings(
        source_dsn=replica_level_server,
        kafka_bootstrap=stack.kafka_bootstrap,
        slot="unused",
        publication="bookaudit",
        topic_prefix=prefix,
        source_name="bookings",
        exit_when_idle=True,
    )
    assert OutboxRelay(settings, lambda _m: None).run().changes == 2

    # Any confluent-kafka consumer reads the events with bookaudit's deserializer.
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": prefix,
            "auto.offset.reset": "earliest",
            "value.deserializer": EnvelopeDeserializer(),
        }
    )
    events: list[Envelope] = []
    try:
        consumer.subscribe([f"{prefix}.public.bookings"])
        deadline = time.monotonic() + 60
        while len(events) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                envelope = msg.value()
                assert isinstance(envelope, Envelope)
                events.append(envelope)
    finally:
        consumer.close()
    seen = sorted(
        (
            e.source.sequence,
            e.op,
            e.actor.id,
            e.actor.role,
            (e.before or {}).get("price"),
            (e.after or {}).get("price"),
            e.source.mode,
        )
        for e in events
    )
    assert seen == [
        (0, "c", "alice", "admin", None, "149.90", "trigger"),
        (1, "u", "alice", "admin", "149.90", "189.50", "trigger"),
    ]


def test_dry_run_shows_every_grant_and_an_unknown_role_is_refused(
    schema_pipeline: Pipeline,
) -> None:
    pipeline = schema_pipeline
    app = pipeline.app_role
    bookings = str(pipeline.schema.bookings_table)
    out = pipeline.cli(
        "source", "install", "--table", bookings, "--grant-to", app, "--dry-run"
    ).stdout
    assert f'GRANT USAGE ON SCHEMA bookaudit TO "{app}";' in out
    set_actor = "bookaudit.set_actor(text, text, text, text, text)"
    assert f'GRANT EXECUTE ON FUNCTION {set_actor} TO "{app}";' in out
    assert "REVOKE ALL ON bookaudit.context_key FROM PUBLIC;" in out
    assert [line for line in out.splitlines() if line.startswith("GRANT")] == [
        f'GRANT USAGE ON SCHEMA bookaudit TO "{app}";',
        f'GRANT EXECUTE ON FUNCTION {set_actor} TO "{app}";',
    ]
    refused = pipeline.cli(
        "source", "install", "--table", bookings, "--grant-to", "nobody_here", check=False
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "bookaudit: error: --grant-to 'nobody_here': no such role in this server"
    )


def test_the_application_role_holds_no_privilege_but_set_actor(
    schema_pipeline: Pipeline,
) -> None:
    """Fewest grants: the triggers run as the install role, so the application needs nothing
    in the bookaudit schema beyond calling set_actor."""
    pipeline = schema_pipeline
    with pipeline.owner() as conn:
        triggers = conn.execute(
            "SELECT DISTINCT p.proname, p.prosecdef, p.proconfig FROM pg_trigger t "
            "JOIN pg_proc p ON p.oid = t.tgfoid WHERE p.pronamespace = 'bookaudit'::regnamespace "
            "ORDER BY 1"
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'bookaudit'::regnamespace "
            "AND has_function_privilege(%s, p.oid, 'EXECUTE') AND NOT EXISTS (SELECT 1 FROM "
            "pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1",
            (pipeline.app_role,),
        ).fetchall()
        relations = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'bookaudit'::regnamespace "
            "AND (has_table_privilege(%(r)s, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') "
            "     OR (c.relkind = 'S' AND has_sequence_privilege(%(r)s, c.oid, 'USAGE')))",
            {"r": pipeline.app_role},
        ).fetchall()
    expected = (
        ["emit_context"]
        if pipeline.mode == "logical"
        else ["outbox_row", "record_context", "register_commit"]
    )
    assert [t[0] for t in triggers] == expected
    for name, definer, config in triggers:
        assert definer, f"{name} must run as the install role"
        assert config == ["search_path=pg_catalog, pg_temp"], name
    assert functions == [("set_actor",)]
    assert relations == []


def test_application_role_that_owns_nothing_keeps_writing_after_install(
    schema_pipeline: Pipeline,
) -> None:
    """The app's role has table privileges only: it names its actor, its changes are audited,
    and (trigger mode) it can neither read nor write the outbox itself."""
    pipeline = schema_pipeline
    role = pipeline.app_role  # made by the harness with table privileges, named in --grant-to
    with pipeline.source() as app:
        app.execute("SELECT bookaudit.set_actor('olga', role => 'dispatcher')")
        add_customer(pipeline, app, "Ada")
        app.commit()
        add_customer(pipeline, app, "Bo")  # no actor: the db role
        app.commit()
        if pipeline.mode == "trigger":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("DELETE FROM bookaudit.outbox")
    pipeline.flow()
    rows = pipeline.warehouse(
        "SELECT after ->> %s, actor, db_user FROM audit.row_changes ORDER BY commit_lsn",
        (NAMED_CUSTOMER[pipeline.schema.name][1],),
    )
    assert rows == [("Ada", "olga", role), ("Bo", None, role)]
