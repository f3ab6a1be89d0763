"""Commit → alert latency at 1k changes/s, against commit → change event on Kafka in the same run."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
from confluent_kafka import Consumer
from psycopg.conninfo import make_conninfo

from bookaudit.demo.day import create_sample_schema
from bookaudit.kafka.alert import alerts_topic, decode_alert
from bookaudit.kafka.serde import decode_envelope
from bookaudit.source.install import TableName, apply, plan_install
from bookaudit.warehouse.schema import init_warehouse
from devstack import delete_topics, reset_databases

RATE = 1000  # row changes per second
DURATION_S = 30
TICK_S = 0.01
PER_TXN = int(RATE * TICK_S)  # changes per transaction, one transaction per tick
BOOKINGS = 2000
TARGET_P99_MS = 1000.0


@dataclass
class Probe:
    """A plain consumer that stamps each record's arrival against its commit time."""

    bootstrap: str
    topic: str
    since_ms: int
    latencies_ms: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def commit_ms(self, value: bytes) -> int:
        if self.topic.endswith(".alerts"):
            return int(decode_alert(value)["committed_at_ms"])
        # The fast reader: the probe shares the machine with what it measures.
        return int(decode_envelope(value)["source"]["ts_ms"])

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "bench-probe-" + uuid.uuid4().hex[:8],
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        consumer.subscribe([self.topic])
        try:
            while not self.stop.is_set():
                msg = consumer.poll(0.05)
                value = None if msg is None or msg.error() is not None else msg.value()
                if value is None:
                    continue
                arrived_ms = time.time() * 1000
                committed = self.commit_ms(value)
                if committed >= self.since_ms:
                    self.latencies_ms.append(arrived_ms - committed)
        finally:
            consumer.close()


@contextmanager
def databases(
    admin_dsn: str, bootstrap: str, kind: str = "bench"
) -> Iterator[tuple[str, str, str]]:
    """A run's name (`<kind>_<random>`, its slot and topic prefix too), source DSN and warehouse
    DSN. Afterwards the run's databases go, with their slots, and so do its topics."""
    name = f"{kind}_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}_src"')
        admin.execute(f'CREATE DATABASE "{name}_wh"')
    try:
        yield (
            name,
            make_conninfo(admin_dsn, dbname=f"{name}_src"),
            make_conninfo(admin_dsn, dbname=f"{name}_wh"),
        )
    finally:
        reset_databases(admin_dsn, (f"{name}_src", f"{name}_wh"), create=False)
        delete_topics(bootstrap, name)


def prepare(source_dsn: str, warehouse_dsn: str, slot: str) -> list[int]:
    """Sample schema, audit install, the bookings (before the slot: not part of the stream)."""
    create_sample_schema(source_dsn)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        apply(conn, plan_install(conn, [TableName.parse("bookings")], "bookaudit"))
        row = conn.execute("INSERT INTO customers (name) VALUES ('bench') RETURNING id").fetchone()
        assert row is not None
        ids = conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price) "
            "SELECT %s, 'HVAC service', 'Main St ' || g, 100 + g %% 900 "
            "FROM generate_series(1, %s) g RETURNING id",
            (row[0], BOOKINGS),
        ).fetchall()
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    init_warehouse(warehouse_dsn)
    return [int(str(r[0])) for r in ids]


def edit(conn: psycopg.Connection[tuple[Any, ...]], ids: list[int], approved: bool) -> None:
    with conn.transaction():
        if approved:
            conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        else:
            conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        conn.execute("UPDATE bookings SET price = price + 0.01 WHERE id = ANY(%s)", (ids,))


def drive(source_dsn: str, ids: list[int]) -> tuple[int, int, float]:
    """RATE changes/s for DURATION_S, every other transaction unapproved; returns
    (changes, unapproved changes, seconds taken)."""
    ticks = int(DURATION_S / TICK_S)
    unapproved = 0
    with psycopg.connect(source_dsn, application_name="bench-load") as conn:
        started = time.perf_counter()
        for tick in range(ticks):
            due = started + tick * TICK_S
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            start = (tick * PER_TXN) % len(ids)
            batch = ids[start : start + PER_TXN]
            approved = tick % 2 == 0
            edit(conn, batch, approved)
            unapproved += 0 if approved else len(batch)
        taken = time.perf_counter() - started
    return ticks * PER_TXN, unapproved, taken


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`bookaudit ARGS` as a service runs: a process in a session of its own. Linux shares CPU
    between sessions (autogroups), and PostgreSQL gives every backend a session; run inside the
    bench's session, the capture, the writer and the bench itself shared one share among a dozen,
    and whichever needed most fell behind for want of CPU the machine had."""
    return subprocess.Popen(
        [sys.executable, "-m", "bookaudit", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate what still runs, kill what ignores that, and reap all. Spawned in sessions of
    their own, the processes no longer get the bench's Ctrl-C and would otherwise outlive it."""
    for process in processes:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(what: str, check: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(0.1)


def percentiles(values: list[float]) -> tuple[float, float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98], max(values)


@click.command()
def main() -> None:
    admin = os.environ.get("BOOKAUDIT_ADMIN_DSN")
    bootstrap = os.environ.get("BOOKAUDIT_KAFKA_BOOTSTRAP")
    if not admin or not bootstrap:
        raise click.ClickException('run under the stack: eval "$(python -m devstack env)"')
    with databases(admin, bootstrap) as (name, source_dsn, warehouse_dsn):
        click.echo(f"preparing {BOOKINGS} bookings ...", err=True)
        ids = prepare(source_dsn, warehouse_dsn, name)
        env = {
            **os.environ,
            "BOOKAUDIT_SOURCE_DSN": source_dsn,
            "BOOKAUDIT_WAREHOUSE_DSN": warehouse_dsn,
            "BOOKAUDIT_KAFKA_BOOTSTRAP": bootstrap,
            "BOOKAUDIT_SLOT": name,
            "BOOKAUDIT_TOPIC_PREFIX": name,
            "BOOKAUDIT_ALERTS_GROUP_ID": f"{name}-alerts",
        }
        processes = [
            spawn(["capture"], env),
            spawn(["consume", "alerts", "--no-stdout"], env),
        ]
        probes: list[Probe] = []
        try:
            # Warm up until an unapproved edit comes out as an alert: every stage is running.
            with psycopg.connect(source_dsn) as conn:
                edit(conn, ids[:1], approved=False)
            count_sql = "SELECT count(*) FROM audit.alert_deliveries WHERE channel = 'kafka'"

            def delivered() -> int:
                with psycopg.connect(warehouse_dsn) as wh:
                    row = wh.execute(count_sql).fetchone()
                return int(row[0]) if row else 0

            wait_until("the warm-up alert", lambda: delivered() >= 1)
            since_ms = int(time.time() * 1000) + 200
            probes = [
                Probe(bootstrap, f"{name}.public.bookings", since_ms),
                Probe(bootstrap, alerts_topic(name), since_ms),
            ]
            threads = [threading.Thread(target=p.run) for p in probes]
            for t in threads:
                t.start()
            time.sleep(0.5)
            click.echo(f"driving {RATE} changes/s for {DURATION_S} s ...", err=True)
            changes, unapproved, taken = drive(source_dsn, ids)
            wait_until(
                "every alert on the alerts topic",
                lambda: len(probes[1].latencies_ms) >= unapproved,
                timeout=300,
            )
            time.sleep(1.0)
            for p in probes:
                p.stop.set()
            for t in threads:
                t.join()
            with psycopg.connect(warehouse_dsn) as wh:
                rows = wh.execute(
                    "SELECT count(*), count(DISTINCT alert_id), "
                    "array_agg(extract(epoch FROM recorded_at - committed_at) * 1000) "
                    "FROM audit.alerts WHERE committed_at >= to_timestamp(%s / 1000.0)",
                    (since_ms,),
                ).fetchone()
            assert rows is not None
            recorded, distinct, recorded_ms = int(rows[0]), int(rows[1]), rows[2] or []
        finally:
            stop(processes)

    changes_seen, alerts_seen = (len(p.latencies_ms) for p in probes)
    if recorded != unapproved or distinct != unapproved or alerts_seen != unapproved:
        raise click.ClickException(
            f"expected {unapproved} alerts, recorded {recorded} ({distinct} distinct), "
            f"{alerts_seen} on the topic"
        )
    if changes_seen != changes:
        raise click.ClickException(
            f"expected {changes} change events, the probe saw {changes_seen}"
        )
    rows_out = [
        ("commit → change event on Kafka (baseline)", probes[0].latencies_ms),
        ("commit → alert recorded in audit.alerts", [float(v) for v in recorded_ms]),
        ("commit → alert on the alerts topic", probes[1].latencies_ms),
    ]
    click.echo(
        f"{changes} changes in {taken:.1f} s ({changes / taken:,.0f} changes/s), "
        f"{unapproved} unapproved → {alerts_seen} alerts, each once"
    )
    click.echo(f"{'latency, ms':44} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    for label, values in rows_out:
        p50, p95, p99, top = percentiles(values)
        click.echo(f"{label:44} {p50:7.0f} {p95:7.0f} {p99:7.0f} {top:7.0f}")
    base = percentiles(probes[0].latencies_ms)
    alert = percentiles(probes[1].latencies_ms)
    click.echo(
        f"alert / baseline ratio at p50, p99:            {alert[0] / base[0]:5.2f} {alert[2] / base[2]:5.2f}"
    )
    verdict = "met" if alert[2] < TARGET_P99_MS else "MISSED"
    click.echo(f"target p99 commit → alert < {TARGET_P99_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
