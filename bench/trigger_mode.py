"""Trigger mode's cost on source write throughput (pgbench, same run) and the relay's throughput."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import click
import psycopg

from bench.capture import _FILL, _TABLE, _pg_tool, bench_database, bench_topics
from bookaudit.cdc.relay import OutboxRelay
from bookaudit.cdc.settings import CaptureSettings
from bookaudit.source.install import TableName, apply, plan_install

ROWS = 100_000
BULK = 100_000
SECONDS = 10
ROUNDS = 3
CLIENTS = 4

# One booking's price and status per transaction, the actor set with SET LOCAL so that the very
# same script runs against a database with nothing installed.
_SCRIPT = f"""\\set id random(1, {ROWS})
BEGIN;
SET LOCAL bookaudit.actor = 'bench';
UPDATE bench_bookings SET price = price + 0.01,
    status = CASE WHEN status = 'scheduled' THEN 'confirmed' ELSE 'scheduled' END,
    updated_at = now() WHERE id = :id;
END;
"""
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


def prepare(dsn: str, mode: str | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
        conn.execute(_FILL, (ROWS,))
        conn.execute("VACUUM ANALYZE bench_bookings")
        if mode is not None:
            tables = [TableName.parse("bench_bookings")]
            apply(conn, plan_install(conn, tables, "bookaudit", mode))
        if mode == "logical":
            # A slot that nobody reads still makes the server decode-ready and keep the WAL.
            conn.execute("SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')")


def pgbench(dsn: str, script: Path, seconds: int) -> float:
    result = subprocess.run(
        [_pg_tool("pgbench"), "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(seconds),
         "-f", str(script), dsn],
        check=True, capture_output=True, text=True, timeout=seconds + 120,
    )  # fmt: skip
    found = _TPS.search(result.stdout)
    if found is None:
        raise click.ClickException(f"pgbench printed no tps:\n{result.stdout}{result.stderr}")
    return float(found.group(1))


def queued(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM bookaudit.outbox").fetchone()
    assert row is not None
    return int(row[0])


def time_relay(dsn: str, bootstrap: str, prefix: str) -> tuple[float, int]:
    settings = CaptureSettings(
        source_dsn=dsn,
        kafka_bootstrap=bootstrap,
        slot="unused",
        publication="bookaudit",
        topic_prefix=prefix,
        source_name="bench",
        exit_when_idle=True,
    )
    started = time.perf_counter()
    stats = OutboxRelay(settings, lambda m: click.echo(f"  {m}", err=True)).run()
    return time.perf_counter() - started, stats.changes


@click.command()
@click.option("--seconds", default=SECONDS, show_default=True, help="pgbench duration per run")
@click.option("--rounds", default=ROUNDS, show_default=True, help="interleaved runs per mode")
def main(seconds: int, rounds: int) -> None:
    admin = os.environ.get("BOOKAUDIT_ADMIN_DSN")
    bootstrap = os.environ.get("BOOKAUDIT_KAFKA_BOOTSTRAP")
    if not admin or not bootstrap:
        raise click.ClickException('run under the stack: eval "$(python -m devstack env)"')
    modes = {"none": None, "logical": "logical", "trigger": "trigger"}
    tps: dict[str, list[float]] = {label: [] for label in modes}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "booking_update.sql"
        script.write_text(_SCRIPT)
        dsns = {label: stack.enter_context(bench_database(admin)) for label in modes}
        for label, mode in modes.items():
            prepare(dsns[label], mode)
        # Interleaved rounds, medians: the machine is shared, so noise hits every mode alike.
        for r in range(rounds):
            for label in modes:
                click.echo(f"round {r + 1}/{rounds}, pgbench {label}: {seconds} s", err=True)
                tps[label].append(pgbench(dsns[label], script, seconds))
        dsn = dsns["trigger"]
        backlog = queued(dsn)
        # Each relay run on topics of its own, deleted with the databases at the end.
        small_s, small = time_relay(dsn, bootstrap, stack.enter_context(bench_topics(bootstrap)))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE bench_bookings SET price = price + 1 WHERE id <= %s", (BULK,))
        bulk_s, bulk = time_relay(dsn, bootstrap, stack.enter_context(bench_topics(bootstrap)))
    if small != backlog or bulk != BULK:
        raise click.ClickException(f"relay sent {small}/{backlog} and {bulk}/{BULK} changes")
    median = {label: statistics.median(runs) for label, runs in tps.items()}
    click.echo(
        f"pgbench, 1-row booking updates, {CLIENTS} clients, median of {rounds} x {seconds} s:"
    )
    for label in modes:
        runs = ", ".join(f"{t:,.0f}" for t in tps[label])
        click.echo(f"  {label:8} {median[label]:8,.0f} tps   ({runs})")
    click.echo(f"logical / no audit ratio:              {median['logical'] / median['none']:8.3f}")
    click.echo(f"trigger / no audit ratio:              {median['trigger'] / median['none']:8.3f}")
    click.echo(
        f"relay, {small:,} one-change transactions: {small / small_s:8,.0f} changes/s "
        f"({small_s:.2f} s)"
    )
    click.echo(
        f"relay, one {bulk:,}-row transaction:     {bulk / bulk_s:8,.0f} changes/s ({bulk_s:.2f} s)"
    )


if __name__ == "__main__":
    main()
