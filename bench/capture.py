"""Capture throughput for a 200k-row UPDATE, against pg_recvlogical's decoding ceiling."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg
from psycopg.conninfo import make_conninfo

from bookaudit.cdc.capture import Capture
from bookaudit.cdc.settings import CaptureSettings
from bookaudit.source.install import TableName, apply, plan_install
from devstack import delete_topics, reset_databases

ROWS = 200_000

_TABLE = """
CREATE TABLE bench_bookings (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, service text NOT NULL,
    address text NOT NULL, scheduled_start timestamptz, scheduled_end timestamptz,
    status text NOT NULL, price numeric(12, 2) NOT NULL, currency char(3) NOT NULL,
    updated_at timestamptz NOT NULL
)
"""
_FILL = """
INSERT INTO bench_bookings
SELECT g, g %% 5000, 'HVAC service', 'Main St ' || g, now(), now() + interval '2 hours',
       'scheduled', 100 + (g %% 900) + 0.99, 'EUR', now()
FROM generate_series(1, %s) g
"""


def _pg_tool(name: str) -> str:
    """Debian's wrappers pick a cluster; the versioned binary is what we want."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise click.ClickException(f"{name} not found: install postgresql-client")
    return found


@contextmanager
def bench_database(admin_dsn: str) -> Iterator[str]:
    name = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    try:
        yield dsn
    finally:
        reset_databases(admin_dsn, (name,), create=False)


@contextmanager
def bench_topics(bootstrap: str) -> Iterator[str]:
    """A topic prefix of the run's own; afterwards the topics under it are deleted."""
    prefix = "bench" + uuid.uuid4().hex[:6]
    try:
        yield prefix
    finally:
        delete_topics(bootstrap, prefix)


def prepare(dsn: str) -> str:
    """Table, audit install, both slots, then the UPDATE; returns the LSN after its commit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
        conn.execute(_FILL, (ROWS,))
        apply(conn, plan_install(conn, [TableName.parse("bench_bookings")], "bookaudit"))
        for slot in ("bench_capture", "bench_recv"):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        # One transaction, so the UPDATE carries an application actor like real traffic.
        with conn.transaction():
            conn.execute("SELECT bookaudit.set_actor('bench', role => 'admin')")
            conn.execute("UPDATE bench_bookings SET price = price + 1, updated_at = now()")
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])


def time_recvlogical(dsn: str, end_lsn: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            _pg_tool("pg_recvlogical"),
            "--start",
            "--no-loop",
            "-S",
            "bench_recv",
            "-d",
            make_conninfo(dsn),
            "-f",
            "/dev/null",
            "-E",
            end_lsn,
            "-o",
            "proto_version=2",
            "-o",
            "publication_names=bookaudit",
            "-o",
            "messages=true",
        ],
        check=True,
        env={**os.environ, "PGAPPNAME": "bench"},
        timeout=600,
    )
    return time.perf_counter() - started


def time_capture(dsn: str, bootstrap: str, prefix: str) -> tuple[float, int]:
    settings = CaptureSettings(
        source_dsn=dsn,
        kafka_bootstrap=bootstrap,
        slot="bench_capture",
        publication="bookaudit",
        topic_prefix=prefix,
        source_name="bench",
        exit_when_idle=True,
    )
    started = time.perf_counter()
    stats = Capture(settings, lambda m: click.echo(f"  {m}", err=True)).run()
    return time.perf_counter() - started, stats.changes


@click.command()
def main() -> None:
    admin = os.environ.get("BOOKAUDIT_ADMIN_DSN")
    bootstrap = os.environ.get("BOOKAUDIT_KAFKA_BOOTSTRAP")
    if not admin or not bootstrap:
        raise click.ClickException('run under the stack: eval "$(python -m devstack env)"')
    with bench_database(admin) as dsn, bench_topics(bootstrap) as prefix:
        click.echo(f"preparing {ROWS} rows and one {ROWS}-row UPDATE ...", err=True)
        end_lsn = prepare(dsn)
        recv_s = time_recvlogical(dsn, end_lsn)
        capture_s, changes = time_capture(dsn, bootstrap, prefix)
    if changes != ROWS:
        raise click.ClickException(f"capture produced {changes} events, expected {ROWS}")
    recv_rate = ROWS / recv_s
    capture_rate = ROWS / capture_s
    click.echo(
        f"pg_recvlogical -f /dev/null (decoding ceiling): {recv_rate:10,.0f} changes/s ({recv_s:.2f} s)"
    )
    click.echo(
        f"bookaudit capture, commit → Kafka ack:          {capture_rate:10,.0f} changes/s ({capture_s:.2f} s)"
    )
    click.echo(f"capture / ceiling ratio:                        {capture_rate / recv_rate:10.3f}")


if __name__ == "__main__":
    main()
