"""A per-test pipeline: its own source and warehouse databases, slot, topic prefix and group,
in either capture mode (logical decoding, or trigger outbox + relay)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bookaudit.cdc.capture import Capture
from bookaudit.cdc.decode import LogicalMessage, decode_message
from bookaudit.cdc.relay import OutboxRelay
from bookaudit.cdc.settings import CaptureSettings, CaptureStats
from bookaudit.consumers._kafka import ConsumerSettings
from bookaudit.consumers.alerts.job import AlertsJob, AlertsSettings, AlertsStats
from bookaudit.consumers.alerts.rulefile import load_rules
from bookaudit.consumers.alerts.ruleset import RuleSet
from bookaudit.consumers.audit.job import AuditWriter, WriterStats
from bookaudit.demo.day import create_app_role
from bookaudit.kafka.alert import alerts_topic
from bookaudit.model import CONTEXT_PREFIX
from bookaudit.source.audit_start import AuditStart, install
from bookaudit.source.install import TableName
from bookaudit.warehouse.schema import init_warehouse
from devstack import StackEnv, _postgres, delete_topics, reset_databases
from tests.integration.schemas import SAMPLE, Key, Schema


@contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    """An empty database of its own on the stack's server, dropped afterwards, failed or not."""
    name = "t" + uuid.uuid4().hex[:10]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def private_server(settings: dict[str, str]) -> Iterator[str]:
    """A second real PostgreSQL with some settings of its own (a managed database's limits):
    the shared stack must not be restarted or starved for one test."""
    bin_dir = _postgres.newest_bin_dir()
    assert bin_dir is not None, "PostgreSQL binaries are missing"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg_dir = Path(tempfile.mkdtemp(prefix="ba-private-"))
    _postgres.init_cluster(bin_dir, pg_dir, port)
    with (pg_dir / "data" / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    pid = _postgres.start(bin_dir, pg_dir, port)
    try:
        yield _postgres.dsn(port, "postgres")
    finally:
        _postgres.stop(bin_dir, pg_dir, pid)
        shutil.rmtree(pg_dir, ignore_errors=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll until `check` holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Ask a process to stop as a service manager does (SIGTERM) and reap it; one that has not
    stopped within `timeout` is killed and reaped, then its test fails. One that already exited
    is left as it is, with its return code for the test to check."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        process.kill()
        process.wait()
        raise AssertionError(
            f"{process.args!r} ignored SIGTERM for {timeout:.0f} s: killed"
        ) from err


@dataclass
class Pipeline:
    stack: StackEnv
    mode: str = "logical"
    name: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:10])
    logs: list[str] = field(default_factory=list)
    schema: Schema = SAMPLE
    source_name: str = "bookings"
    # Another pipeline's warehouse, topics and groups to share (several sources, one warehouse).
    shared_with: Pipeline | None = None

    @property
    def source_dsn(self) -> str:
        return make_conninfo(self.stack.admin_dsn, dbname=f"{self.name}_src")

    @property
    def app_role(self) -> str:
        """The application's login: writes the audited tables, owns nothing (as in production)."""
        return f"{self.name}_app"

    @property
    def app_dsn(self) -> str:
        return make_conninfo(self.source_dsn, user=self.app_role)

    @property
    def warehouse_dsn(self) -> str:
        if self.shared_with is not None:
            return self.shared_with.warehouse_dsn
        return make_conninfo(self.stack.admin_dsn, dbname=f"{self.name}_wh")

    @property
    def slot(self) -> str:
        return self.name

    @property
    def prefix(self) -> str:
        return self.name if self.shared_with is None else self.shared_with.prefix

    @property
    def group_id(self) -> str:
        return f"{self.prefix}-audit"

    @property
    def alerts_group_id(self) -> str:
        return f"{self.prefix}-alerts"

    @property
    def config_path(self) -> Path | None:
        """A bookaudit.toml holding the schema's [map], when it has its own."""
        if self.schema.map_toml is None:
            return None
        path = Path(tempfile.gettempdir()) / f"{self.name}-bookaudit.toml"
        if not path.exists():
            path.write_text(self.schema.map_toml)
        return path

    @property
    def alerts_topic(self) -> str:
        return alerts_topic(self.prefix)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BOOKAUDIT_SOURCE_DSN": self.source_dsn,
            "BOOKAUDIT_WAREHOUSE_DSN": self.warehouse_dsn,
            "BOOKAUDIT_KAFKA_BOOTSTRAP": self.stack.kafka_bootstrap,
            "BOOKAUDIT_SLOT": self.slot,
            "BOOKAUDIT_PUBLICATION": "bookaudit",
            "BOOKAUDIT_TOPIC_PREFIX": self.prefix,
            "BOOKAUDIT_GROUP_ID": self.group_id,
            "BOOKAUDIT_MODE": self.mode,
            "BOOKAUDIT_ALERTS_GROUP_ID": self.alerts_group_id,
            "BOOKAUDIT_SOURCE_NAME": self.source_name,
            **({"BOOKAUDIT_CONFIG": str(self.config_path)} if self.config_path else {}),
        }

    # --- lifecycle --------------------------------------------------------------------------

    def create(self, tables: Sequence[str] | None = None, install: bool = True) -> Pipeline:
        """The schema and the warehouse, installed as a user would: no capture runs until a test
        starts one, since the install alone makes the audit complete."""
        with psycopg.connect(self.stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}_src"')
            if self.shared_with is None:
                admin.execute(f'CREATE DATABASE "{self.name}_wh"')
        self.schema.create(self.source_dsn)
        schemas = sorted({TableName.parse(t).schema for t in self.schema.tables})
        create_app_role(self.source_dsn, self.app_role, schemas)
        if install:
            self.install(self.schema.tables if tables is None else tables)
        # A schema with its own map gets it under this pipeline's source name; a shared
        # warehouse is initialised again (every file is idempotent), keeping the others' maps.
        own = {self.source_name: self.schema.entity_map} if self.schema.map_toml else {}
        init_warehouse(self.warehouse_dsn, own)
        return self

    def install(self, tables: Sequence[str] | None = None, snapshot: str = "initial") -> AuditStart:
        return install(
            self.source_dsn,
            [TableName.parse(t) for t in (self.schema.tables if tables is None else tables)],
            publication="bookaudit",
            slot=self.slot,
            mode=self.mode,
            snapshot=snapshot,
            grant_to=[self.app_role],
            progress=self.logs.append,
        )

    def drop(self) -> None:
        # Every slot of the source database goes too (the capture's and any probe slot a test
        # made): a logical slot left behind would keep the database from being dropped.
        reset_databases(self.stack.admin_dsn, (f"{self.name}_src", f"{self.name}_wh"), create=False)
        with psycopg.connect(self.stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{self.app_role}"')
        if self.config_path is not None:
            self.config_path.unlink(missing_ok=True)
        self.drop_topics()

    def drop_topics(self) -> None:
        """Delete this pipeline's topics; a pipeline that shares another's prefix leaves them to
        that one."""
        if self.shared_with is None:
            delete_topics(self.stack.kafka_bootstrap, self.prefix)

    # --- running the stages -----------------------------------------------------------------

    def capture_settings(self) -> CaptureSettings:
        return CaptureSettings(
            source_dsn=self.source_dsn,
            kafka_bootstrap=self.stack.kafka_bootstrap,
            slot=self.slot,
            publication="bookaudit",
            topic_prefix=self.prefix,
            source_name=self.source_name,
            exit_when_idle=True,
        )

    def capture(self) -> CaptureStats:
        """The mode's capture, in-process, until every committed change is in Kafka."""
        runner = OutboxRelay if self.mode == "trigger" else Capture
        return runner(self.capture_settings(), self.logs.append).run()

    def consume(self, group_id: str | None = None, batch_size: int = 500) -> WriterStats:
        settings = ConsumerSettings(
            bootstrap=self.stack.kafka_bootstrap,
            group_id=group_id or self.group_id,
            topic_prefix=self.prefix,
            batch_size=batch_size,
        )
        return AuditWriter(settings, self.warehouse_dsn, self.logs.append).run(exit_when_idle=True)

    def flow(self) -> None:
        self.capture()
        self.consume()

    def alerts_settings(
        self, rules: RuleSet, group_id: str | None = None, webhook: str | None = None
    ) -> AlertsSettings:
        consumer = ConsumerSettings(
            bootstrap=self.stack.kafka_bootstrap,
            group_id=group_id or self.alerts_group_id,
            topic_prefix=self.prefix,
            poll_timeout_s=0.2,
            tables=rules.topics_tables,
            eager=True,
        )
        return AlertsSettings(consumer, self.warehouse_dsn, self.alerts_topic, webhook)

    def alerts(
        self,
        rules: str | Path | None = None,
        group_id: str | None = None,
        out: list[str] | None = None,
    ) -> AlertsStats:
        """Run the alerts consumer in-process until idle; JSON lines go to `out` when given."""
        ruleset = load_rules(rules, self.schema.entity_map)
        settings = self.alerts_settings(ruleset, group_id)
        job = AlertsJob(settings, ruleset, self.logs.append, None if out is None else out.append)
        return job.run(exit_when_idle=True)

    def cli(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "bookaudit", *args],
            env=self.env() if env is None else env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"bookaudit {' '.join(args)} failed:\n{result.stderr}")
        return result

    def spawn_log(self, command: str) -> Path:
        """Where `spawn` appends the stderr of a `bookaudit <command> ...` process."""
        return Path(tempfile.gettempdir()) / f"{self.name}-{command}.log"

    @contextmanager
    def running(self, *args: str, stop_timeout: float = 30.0) -> Iterator[subprocess.Popen[str]]:
        """A `bookaudit <args>` process for the length of the block, its stderr in a log file
        named in the test output. However the block ends, a process still running is stopped
        and reaped (`stop`, within `stop_timeout`): none outlives its test, even one whose wait
        timed out."""
        log_path = self.spawn_log(args[0])
        self.logs.append(f"spawned {' '.join(args)}, stderr in {log_path}")
        with log_path.open("a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bookaudit", *args],
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        try:
            yield process
        finally:
            stop(process, stop_timeout)

    # --- looking at what the source recorded ------------------------------------------------

    @property
    def probe_slot(self) -> str:
        return f"{self.name}_probe"

    def start_context_probe(self) -> None:
        """Logical mode: a second slot, so a test can read the WAL stream itself without
        consuming it. Trigger mode records contexts in a table that needs no probe."""
        if self.mode == "trigger":
            return
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.probe_slot,)
            )

    def context_messages(self, txid: int) -> int:
        """How many actor-context records the source wrote for one transaction (full txid):
        context messages in the WAL, or contexts carried by outbox rows before the relay."""
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            if self.mode == "trigger":
                found = conn.execute(
                    "SELECT count(*) FROM bookaudit.outbox WHERE txid = %s AND context IS NOT NULL",
                    (txid,),
                ).fetchone()
                assert found is not None
                return int(found[0])
            rows = conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                "'proto_version', '2', 'publication_names', 'bookaudit', 'messages', 'true') "
                "WHERE xid::text = %s AND get_byte(data, 0) = ascii('M')",
                (self.probe_slot, str(txid % 2**32)),
            ).fetchall()
        messages = [decode_message(bytes(r[0])) for r in rows]
        return sum(
            1
            for m in messages
            if isinstance(m, LogicalMessage) and m.prefix == CONTEXT_PREFIX and m.transactional
        )

    # --- databases --------------------------------------------------------------------------

    def seed(self, bookings: int = 1, price: str = "100.00", actor: str = "seed") -> list[Key]:
        """One customer with `bookings` bookings, written in one transaction by `actor`, in the
        schema's own tables; returns the bookings' keys (ids, or job numbers)."""
        with self.source() as conn:
            conn.execute("SELECT bookaudit.set_actor(%s)", (actor,))
            return self.schema.seed(conn, bookings, price)

    def column_type(self, table: str, column: str) -> str:
        """A source column's type as SQL spells it (`bigint`, `text`): for a migration's table
        that refers to the schema's own key."""
        with self.owner() as conn:
            row = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
                (str(TableName.parse(table).ident().as_string(conn)), column),
            ).fetchone()
        assert row is not None, f"{table} has no column {column}"
        return str(row[0])

    def topic(self, table: str) -> str:
        """This pipeline's Kafka topic for a source table (`customers`, `ops.jobs`)."""
        return self.schema.topic(self.prefix, table)

    def source(self, application_name: str = "pytest") -> psycopg.Connection[tuple[Any, ...]]:
        """A connection as the application: the non-owner role, granted only its tables."""
        return psycopg.connect(self.app_dsn, application_name=application_name)

    def owner(self, application_name: str = "pytest") -> psycopg.Connection[tuple[Any, ...]]:
        """A connection as the tables' owner (the role that ran `source install`)."""
        return psycopg.connect(self.source_dsn, application_name=application_name)

    def migrate(self, *statements: str | sql.Composed) -> None:
        """A schema migration, run by the owner; like a deploy script, it then grants the
        application role its privileges on what the migration created."""
        with self.owner() as conn:
            for statement in statements:
                conn.execute(statement)
        schemas = sorted({TableName.parse(t).schema for t in self.schema.tables})
        create_app_role(self.source_dsn, self.app_role, schemas)

    def play_day(self) -> str:
        """The schema's day, its application transactions written as the application role
        and the evening's raw psql edit by the owner; returns the booking (or job) it is about."""
        return self.schema.play_day(self.app_dsn, self.source_dsn)

    def warehouse(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.warehouse_dsn) as conn:
            return conn.execute(query, params).fetchall()
