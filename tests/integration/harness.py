"""A per-test pipeline: its own source and warehouse databases, slot, topic prefix and group."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bookaudit.cdc.capture import Capture, CaptureSettings, CaptureStats
from bookaudit.consumers._kafka import ConsumerSettings
from bookaudit.consumers.alerts import AlertsJob, AlertsSettings, AlertsStats
from bookaudit.consumers.alerts_config import RuleSet, load_rules
from bookaudit.consumers.alerts_sink import alerts_topic
from bookaudit.consumers.audit import AuditWriter, WriterStats
from bookaudit.demo.day import AUDITED_TABLES, create_sample_schema
from bookaudit.source.install import TableName, apply, plan_install
from bookaudit.stack import StackEnv
from bookaudit.warehouse.schema import init_warehouse


@dataclass
class Pipeline:
    stack: StackEnv
    name: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:10])
    logs: list[str] = field(default_factory=list)

    @property
    def source_dsn(self) -> str:
        return make_conninfo(self.stack.admin_dsn, dbname=f"{self.name}_src")

    @property
    def warehouse_dsn(self) -> str:
        return make_conninfo(self.stack.admin_dsn, dbname=f"{self.name}_wh")

    @property
    def slot(self) -> str:
        return self.name

    @property
    def prefix(self) -> str:
        return self.name

    @property
    def group_id(self) -> str:
        return f"{self.name}-audit"

    @property
    def alerts_group_id(self) -> str:
        return f"{self.name}-alerts"

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
            "BOOKAUDIT_ALERTS_GROUP_ID": self.alerts_group_id,
        }

    # --- lifecycle --------------------------------------------------------------------------

    def create(self, tables: Sequence[str] = AUDITED_TABLES) -> Pipeline:
        with psycopg.connect(self.stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}_src"')
            admin.execute(f'CREATE DATABASE "{self.name}_wh"')
        create_sample_schema(self.source_dsn)
        self.install(tables)
        init_warehouse(self.warehouse_dsn)
        # Create the slot now: changes committed before it exists are not in its stream.
        self.capture()
        return self

    def install(self, tables: Sequence[str]) -> None:
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            apply(conn, plan_install(conn, [TableName.parse(t) for t in tables], "bookaudit"))

    def drop(self) -> None:
        with psycopg.connect(self.stack.admin_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (self.slot,),
            )
            with psycopg.connect(self.source_dsn, autocommit=True) as src:
                src.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (self.slot,),
                )
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}_src" WITH (FORCE)')
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}_wh" WITH (FORCE)')

    # --- running the stages -----------------------------------------------------------------

    def capture_settings(self) -> CaptureSettings:
        return CaptureSettings(
            source_dsn=self.source_dsn,
            kafka_bootstrap=self.stack.kafka_bootstrap,
            slot=self.slot,
            publication="bookaudit",
            topic_prefix=self.prefix,
            source_name="bookings",
            exit_when_idle=True,
        )

    def capture(self) -> CaptureStats:
        return Capture(self.capture_settings(), self.logs.append).run()

    def consume(self, group_id: str | None = None) -> WriterStats:
        settings = ConsumerSettings(
            bootstrap=self.stack.kafka_bootstrap,
            group_id=group_id or self.group_id,
            topic_prefix=self.prefix,
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
        ruleset = load_rules(rules)
        settings = self.alerts_settings(ruleset, group_id)
        job = AlertsJob(settings, ruleset, self.logs.append, None if out is None else out.append)
        return job.run(exit_when_idle=True)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "bookaudit", *args],
            env=self.env(),
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

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start a bookaudit process; its stderr goes to a log file named in the test output."""
        log_path = self.spawn_log(args[0])
        self.logs.append(f"spawned {' '.join(args)}, stderr in {log_path}")
        with log_path.open("a") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bookaudit", *args],
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )

    # --- databases --------------------------------------------------------------------------

    def source(self, application_name: str = "pytest") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.source_dsn, application_name=application_name)

    def warehouse(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.warehouse_dsn) as conn:
            return conn.execute(query, params).fetchall()
