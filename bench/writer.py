"""The audit writer beside the capture: backlog drain rate on one 200k-row UPDATE, commit →
warehouse latency at steady one-row transactions, and a new table's first change."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg.conninfo import make_conninfo

from bench.alerts import databases, percentiles, spawn, stop, wait_until
from bench.capture import _FILL, _TABLE, _pg_tool
from bookaudit.cdc.capture import Capture
from bookaudit.cdc.settings import CaptureSettings
from bookaudit.consumers._kafka import ConsumerSettings
from bookaudit.consumers.audit.job import AuditWriter, WriterStats
from bookaudit.kafka.serde import decode_envelope
from bookaudit.runtime import tune_collector
from bookaudit.source.install import TableName, apply, plan_install
from bookaudit.warehouse.schema import init_warehouse
from bookaudit.warehouse.verify import verify_chain

ROWS = 200_000
STEADY_ROWS = 10_000
RATES = (1000, 2500)
STEADY_S = 20
WARMUP_S = 2
NEW_TABLES = 3
WRITERS = 2
TARGET_DRAIN_RATIO = 1.0
TARGET_P99_MS = {1000: 100.0, 2500: 250.0}
TARGET_NEW_TABLE_MS = 1000.0

_PGBENCH_SCRIPT = """\\set id random(1, {rows})
BEGIN;
SET LOCAL bookaudit.actor = 'bench';
UPDATE bench_bookings SET price = price + 0.01, updated_at = now() WHERE id = :id;
END;
"""


def _log(message: str) -> None:
    click.echo(f"  {message}", err=True)


def prepare(source: str, warehouse: str, slot: str, rows: int) -> None:
    """The 10-column bookings table, the audit install and the slot (after the rows)."""
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(_TABLE)
        conn.execute(_FILL, (rows,))
        apply(conn, plan_install(conn, [TableName.parse("bench_bookings")], "bookaudit"))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    init_warehouse(warehouse)


# --- backlog drain ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    capture_s: float
    writer_s: float
    stats: WriterStats
    phases: dict[str, float]
    # The same backlog again, into a second warehouse, by writer processes of one group.
    group_s: float


def drain(admin: str, bootstrap: str) -> Drain:
    """One 200k-row UPDATE: the capture puts it on Kafka alone, then the writer drains it alone."""
    with databases(admin, bootstrap, "benchw") as (name, source, warehouse):
        _log(f"drain: preparing {ROWS:,} rows and one {ROWS:,}-row UPDATE ...")
        prepare(source, warehouse, name, ROWS)
        with psycopg.connect(source, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT bookaudit.set_actor('bench', role => 'admin')")
            conn.execute("UPDATE bench_bookings SET price = price + 1, updated_at = now()")
        settings = CaptureSettings(
            source_dsn=source, kafka_bootstrap=bootstrap, slot=name, publication="bookaudit",
            topic_prefix=name, source_name="bench", exit_when_idle=True,
        )  # fmt: skip
        # Both run in this process here, tuned as their commands tune theirs.
        tune_collector()
        started = time.perf_counter()
        captured = Capture(settings, _log).run()
        capture_s = time.perf_counter() - started
        if captured.changes != ROWS:
            raise click.ClickException(f"capture produced {captured.changes}, expected {ROWS}")
        consumer = ConsumerSettings(bootstrap=bootstrap, group_id=name, topic_prefix=name)
        writer = AuditWriter(consumer, warehouse, _log)
        started = time.perf_counter()
        stats = writer.run(exit_when_idle=True)
        writer_s = time.perf_counter() - started
        if stats.written != ROWS:
            raise click.ClickException(f"writer stored {stats.written}, expected {ROWS}")
        group_s = drain_by_group(admin, bootstrap, name)
        return Drain(capture_s, writer_s, stats, dict(writer.phases.seconds), group_s)


def drain_by_group(admin: str, bootstrap: str, prefix: str) -> float:
    """WRITERS `consume audit` processes of one new group drain the topic into a new warehouse:
    how a deployment scales the writer out by partitions."""
    second = f"{prefix}_wh2"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{second}"')
    warehouse = make_conninfo(admin, dbname=second)
    try:
        init_warehouse(warehouse)
        env = {
            **os.environ,
            "BOOKAUDIT_WAREHOUSE_DSN": warehouse,
            "BOOKAUDIT_KAFKA_BOOTSTRAP": bootstrap,
            "BOOKAUDIT_TOPIC_PREFIX": prefix,
            "BOOKAUDIT_GROUP_ID": f"{prefix}-group",
        }
        _log(f"drain: {WRITERS} writer processes of one group ...")
        started = time.perf_counter()
        processes = [spawn(["consume", "audit", "--exit-when-idle"], env) for _ in range(WRITERS)]
        try:
            for p in processes:
                if p.wait(timeout=900) != 0:
                    raise click.ClickException(f"a writer process exited with {p.returncode}")
        finally:
            stop(processes)
        taken = time.perf_counter() - started
        with psycopg.connect(warehouse) as conn:
            row = conn.execute("SELECT count(*) FROM audit.row_changes").fetchone()
        if row is None or row[0] != ROWS:
            raise click.ClickException(f"writer processes stored {row}, expected {ROWS}")
        # Several writers append links to one chain: it must verify link by link.
        _log("drain: warehouse verify over the writer processes' chain ...")
        report = verify_chain(warehouse)
        if not report.intact or report.entries != ROWS:
            problems = "; ".join(report.problems[:5])
            raise click.ClickException(
                f"the writer processes' chain does not verify ({report.entries} rows): {problems}"
            )
        return taken
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{second}" WITH (FORCE)')


# --- steady latency and new tables -------------------------------------------------------------


# When each audit row became visible: its writer's commit, from the warehouse's commit timestamps,
# read after the window. Both times come from the one server's clock.
# The audit rows of one table committed from a time on: what is counted and what is measured.
_ROWS_OF = (
    "FROM audit.row_changes WHERE table_name = %s AND committed_at >= to_timestamp(%s / 1000.0)"
)
_VISIBLE_MS = f"""
SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - committed_at) * 1000
{_ROWS_OF}
ORDER BY committed_at, id
"""


def require_commit_timestamps(admin: str) -> None:
    """The warehouse latency is read from commit timestamps, which a server keeps only with
    track_commit_timestamp (set by the stack's initdb since 2026-11-27)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute("SHOW track_commit_timestamp").fetchone()
    if row is None or row[0] != "on":
        raise click.ClickException(
            "PostgreSQL runs with track_commit_timestamp = off: the bench reads when audit rows "
            "became visible from commit timestamps; re-create the stack (make stack-down "
            "stack-up, which deletes its data) or set it and restart the server"
        )


def visible_ms(warehouse: str, table: str, since_ms: int) -> list[float]:
    """Source commit → the writer's commit timestamp, ms, of each audit row of `table` committed
    from `since_ms` on, in commit order. A row becomes visible when its writer's transaction
    commits, just after the server takes that timestamp."""
    with psycopg.connect(warehouse, autocommit=True) as conn:
        rows = conn.execute(_VISIBLE_MS, (table, since_ms)).fetchall()
    if any(ms is None for (ms,) in rows):
        raise click.ClickException(
            f"an audit row of {table} has no commit timestamp (written before the server kept them)"
        )
    return [float(ms) for (ms,) in rows]


def stored(warehouse: str, table: str, since_ms: int = 0) -> int:
    """How many audit rows of `table` committed from `since_ms` on the warehouse holds."""
    with psycopg.connect(warehouse, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) {_ROWS_OF}", (table, since_ms)).fetchone()
    return int(row[0]) if row else 0


def pgbench(source: str, rate: int, seconds: int) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(_PGBENCH_SCRIPT.format(rows=STEADY_ROWS))
    try:
        subprocess.run(
            [_pg_tool("pgbench"), "-n", "-M", "prepared", "-c", "4", "-j", "2", "-R", str(rate),
             "-T", str(seconds), "-f", script.name, source],
            check=True, capture_output=True, timeout=seconds + 120,
            # The application is a program of its own (see `spawn`).
            start_new_session=True,
        )  # fmt: skip
    finally:
        Path(script.name).unlink()


def add_table(source: str, number: int) -> None:
    """A table the pipeline has never seen: install it while capture and writer run, then write."""
    table = f"bench_new_{number}"
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, note text)")
        apply(
            conn,
            plan_install(
                conn, [TableName.parse("bench_bookings"), TableName.parse(table)], "bookaudit"
            ),
        )
        with conn.transaction():
            conn.execute("SELECT bookaudit.set_actor('bench')")
            conn.execute(f"INSERT INTO {table} VALUES (1, 'first')")


_CPU_GROUPS = (
    "pgbench (the application's load)",
    "source backends (pgbench's)",
    "walsender, capture's catalog",
    "capture",
    "Kafka broker (all its clients)",
    "audit writer",
    "warehouse backends (writer's)",
    "bench (its process, other backends)",
)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_running(marker: bytes, parent: int | None = None) -> list[int]:
    """Processes whose command line holds `marker` (children of `parent` only, if given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if marker not in (entry / "cmdline").read_bytes():
                    continue
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if parent is None or int(stat[1]) == parent:
                    found.append(int(entry.name))
    return found


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far, all cores (/proc/stat: all but idle and
    iowait, guests being counted in user already)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWindow:
    """The CPU each process of the pipeline spends per source transaction over a window: a
    figure that a busy machine stretches less than latency (processes wait, they do not work
    more), so runs on a shared machine can be compared."""

    admin: str
    source_db: str
    warehouse_db: str
    capture_pid: int
    writer_pid: int
    groups: dict[int, str] = field(default_factory=dict)
    before: dict[int, float] = field(default_factory=dict)
    commits: int = 0
    started: float = 0.0
    per_txn_us: dict[str, float] = field(default_factory=dict)
    rate: float = 0.0
    # Busy CPU of the whole machine over the window, in cores: what is left for anything else.
    machine_cores: float = 0.0
    _machine_before: float = 0.0

    def _commits(self) -> int:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.source_db,)
            ).fetchone()
        return int(row[0]) if row else 0

    def _group_pids(self) -> dict[int, str]:
        groups = {
            self.capture_pid: _CPU_GROUPS[3],
            self.writer_pid: _CPU_GROUPS[5],
            os.getpid(): _CPU_GROUPS[7],
        }
        groups.update(dict.fromkeys(_pids_running(b"kafka.Kafka"), _CPU_GROUPS[4]))
        groups.update(dict.fromkeys(_pids_running(b"pgbench\0", os.getpid()), _CPU_GROUPS[0]))
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for pid, db, app in conn.execute(
                "SELECT pid, datname, application_name FROM pg_stat_activity "
                "WHERE datname IN (%s, %s)",
                (self.source_db, self.warehouse_db),
            ):
                if db == self.source_db:
                    groups[pid] = _CPU_GROUPS[1] if app == "pgbench" else _CPU_GROUPS[2]
                elif str(app).startswith("bookaudit-audit-writer"):
                    groups[pid] = _CPU_GROUPS[6]
                else:
                    groups[pid] = _CPU_GROUPS[7]
        return groups

    def start(self) -> None:
        self.groups = self._group_pids()
        self.commits = self._commits()
        self.started = time.monotonic()
        self.before = {pid: cpu for pid in self.groups if (cpu := _cpu_s(pid)) is not None}
        self._machine_before = _machine_busy_s()

    def stop(self) -> None:
        spent = dict.fromkeys(_CPU_GROUPS, 0.0)
        for pid, cpu in self.before.items():
            now = _cpu_s(pid)
            if now is not None:
                spent[self.groups[pid]] += now - cpu
        elapsed = time.monotonic() - self.started
        self.machine_cores = (_machine_busy_s() - self._machine_before) / elapsed
        commits = max(1, self._commits() - self.commits)
        self.rate = commits / elapsed
        self.per_txn_us = {group: s / commits * 1e6 for group, s in spent.items()}

    def measure(self, seconds: float, delay: float) -> threading.Thread:
        """Measure `seconds` from `delay` on, in a thread (before the load ends, while the
        source's backends still exist)."""

        def run() -> None:
            time.sleep(delay)
            self.start()
            time.sleep(seconds)
            self.stop()

        thread = threading.Thread(target=run)
        thread.start()
        return thread


@dataclass(frozen=True)
class Steady:
    warehouse_ms: dict[int, list[float]]
    kafka_ms: dict[int, list[float]]
    new_table_ms: list[float]
    cpu: dict[int, CpuWindow] = field(default_factory=dict)


def _spawn_logged(
    args: list[str], env: dict[str, str], logs: Path | None
) -> subprocess.Popen[bytes]:
    """`bookaudit ARGS` as a process; its log kept in `logs` when given (for profiling)."""
    if logs is None:
        return spawn(args, env)
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{args[-1]}.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bookaudit", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def steady(admin: str, bootstrap: str, logs: Path | None = None) -> Steady:
    require_commit_timestamps(admin)
    with databases(admin, bootstrap, "benchw") as (name, source, warehouse):
        _log(f"steady: {STEADY_ROWS:,} bookings, capture and consume audit as processes ...")
        prepare(source, warehouse, name, STEADY_ROWS)
        env = {
            **os.environ,
            "BOOKAUDIT_SOURCE_DSN": source,
            "BOOKAUDIT_WAREHOUSE_DSN": warehouse,
            "BOOKAUDIT_KAFKA_BOOTSTRAP": bootstrap,
            "BOOKAUDIT_SLOT": name,
            "BOOKAUDIT_TOPIC_PREFIX": name,
            "BOOKAUDIT_GROUP_ID": f"{name}-audit",
        }
        topic = f"{name}.public.bench_bookings"
        bookings_topic(bootstrap, topic)
        processes = [
            _spawn_logged(["capture"], env, logs),
            _spawn_logged(["consume", "audit"], env, logs),
        ]
        _log(f"steady: capture pid {processes[0].pid}, writer pid {processes[1].pid}")
        warehouse_ms: dict[int, list[float]] = {}
        kafka_ms: dict[int, list[float]] = {}
        cpu: dict[int, CpuWindow] = {}
        try:
            # The pipeline is up once a first change has gone all the way through.
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute("UPDATE bench_bookings SET status = 'ready' WHERE id = 1")
            wait_until(
                "the first change in the warehouse",
                lambda: stored(warehouse, "bench_bookings") > 0,
            )
            for rate in RATES:
                _log(f"steady: {rate:,} one-row transactions/s for {STEADY_S} s (pgbench) ...")
                since_ms = int(time.time() * 1000) + WARMUP_S * 1000
                cpu[rate] = CpuWindow(
                    admin, f"{name}_src", f"{name}_wh", processes[0].pid, processes[1].pid
                )
                measuring = cpu[rate].measure(STEADY_S - 1, WARMUP_S)
                pgbench(source, rate, STEADY_S + WARMUP_S)
                measuring.join()
                caught_up(admin, name, source)
                kafka_ms[rate] = kafka_latencies(bootstrap, topic, since_ms)
                expected = len(kafka_ms[rate])
                wait_until(
                    f"{expected} changes in the warehouse",
                    lambda n=expected, t=since_ms: stored(warehouse, "bench_bookings", t) >= n,
                    timeout=300,
                )
                warehouse_ms[rate] = visible_ms(warehouse, "bench_bookings", since_ms)
            new_table_ms = []
            for n in range(1, NEW_TABLES + 1):
                table = f"bench_new_{n}"
                _log(f"new table: {table}")
                add_table(source, n)
                wait_until(f"{table} in the warehouse", lambda t=table: stored(warehouse, t) > 0)
                # Its first change: the earliest committed.
                new_table_ms.append(visible_ms(warehouse, table, 0)[0])
        finally:
            stop(processes)
        return Steady(warehouse_ms, kafka_ms, new_table_ms, cpu)


def bookings_topic(bootstrap: str, topic: str) -> None:
    """The bookings topic, made before the capture runs with the broker's append time on each
    record (LogAppendTime): the time an event reached Kafka is then read after the window, from
    the records themselves, instead of by a consumer working beside what is measured."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(
        topic,
        # As many partitions as the capture would have made it with.
        num_partitions=CaptureSettings.partitions,
        config={"message.timestamp.type": "LogAppendTime"},
    )
    admin.create_topics([new])[topic].result(timeout=30)


def kafka_latencies(bootstrap: str, topic: str, since_ms: int) -> list[float]:
    """Broker append time minus commit time of every change committed from `since_ms` on."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-read-" + uuid.uuid4().hex[:8],
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        # Commit time ≤ append time, so no record of the window was appended before it opened.
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in partitions], timeout=10
        )
        left = {}
        for start in starts:
            _, high = consumer.get_watermark_offsets(start, timeout=10)
            if 0 <= start.offset < high:
                left[start.partition] = high
        consumer.assign([s for s in starts if s.partition in left])
        latencies: list[float] = []
        while left:
            msg = consumer.poll(1.0)
            value = None if msg is None or msg.error() is not None else msg.value()
            if msg is None or value is None:
                continue
            committed = int(decode_envelope(value)["source"]["ts_ms"])
            if committed >= since_ms:
                latencies.append(msg.timestamp()[1] - committed)
            partition, offset = msg.partition(), msg.offset()
            if (
                partition is not None
                and offset is not None
                and offset + 1 >= left.get(partition, 0)
            ):
                left.pop(partition, None)
        return latencies
    finally:
        consumer.close()


def caught_up(admin: str, slot: str, source: str) -> None:
    """Wait until the capture has confirmed, so Kafka has acknowledged, everything written."""
    with psycopg.connect(source, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None
    with psycopg.connect(admin, autocommit=True) as conn:
        wait_until(
            "the capture to confirm the window",
            lambda: bool(
                conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (row[0], slot),
                ).fetchone()[0]  # type: ignore[index]
            ),
            timeout=300,
        )


# --- report ------------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report_drain(d: Drain) -> None:
    capture_rate, writer_rate = ROWS / d.capture_s, ROWS / d.writer_s
    ratio = writer_rate / capture_rate
    click.echo(f"backlog, one {ROWS:,}-row UPDATE of a 10-column table:")
    click.echo(
        f"  capture, commit → Kafka ack:      {capture_rate:8,.0f} changes/s ({d.capture_s:.2f} s)"
    )
    click.echo(
        f"  audit writer, Kafka → warehouse:  {writer_rate:8,.0f} changes/s ({d.writer_s:.2f} s)"
    )
    click.echo(
        f"  writer / capture ratio:           {ratio:8.2f}   target ≥ {TARGET_DRAIN_RATIO}: {_met(ratio >= TARGET_DRAIN_RATIO)}"
    )
    group_rate = ROWS / d.group_s
    click.echo(
        f"  {WRITERS} writer processes, one group:   {group_rate:8,.0f} changes/s ({d.group_s:.2f} s, process start included)"
    )
    click.echo(f"  {WRITERS} writers / capture ratio:        {group_rate / capture_rate:8.2f}")
    click.echo(f"  {WRITERS} writers' chain, warehouse verify:  intact, {ROWS:,} rows")
    total = sum(d.phases.values())
    click.echo(
        f"  where the one writer's time went ({total:.2f} s of work; the lane's SQL steps overlap the Python ones):"
    )
    for phase, seconds in sorted(d.phases.items(), key=lambda kv: -kv[1]):
        click.echo(
            f"    {phase:40s} {seconds:6.2f} s  {seconds / total:5.1%}  {seconds / ROWS * 1e6:6.1f} µs/change"
        )


def report_steady(s: Steady) -> None:
    click.echo("commit → visible, ms, one-row transactions (pgbench -R, 4 clients):")
    click.echo("                                          p50     p95     p99     max")
    for rate in RATES:
        k, w = s.kafka_ms[rate], s.warehouse_ms[rate]
        kp, wp = percentiles(k), percentiles(w)
        click.echo(
            f"  {rate:,}/s  change event on Kafka       {kp[0]:7.0f} {kp[1]:7.0f} {kp[2]:7.0f} {kp[3]:7.0f}   ({len(k):,} changes)"
        )
        click.echo(
            f"  {rate:,}/s  audit row in the warehouse  {wp[0]:7.0f} {wp[1]:7.0f} {wp[2]:7.0f} {wp[3]:7.0f}   ({len(w):,} changes)"
        )
        click.echo(
            f"  {rate:,}/s  target p99 < {TARGET_P99_MS[rate]:.0f} ms: {_met(wp[2] < TARGET_P99_MS[rate])}"
        )
    worst = max(s.new_table_ms)
    shown = ", ".join(f"{ms:.0f}" for ms in s.new_table_ms)
    click.echo(
        f"new table's first change in the warehouse: {shown} ms  target < {TARGET_NEW_TABLE_MS:.0f} ms: {_met(worst < TARGET_NEW_TABLE_MS)}"
    )
    click.echo("(visible: the writer's commit, from the warehouse's commit timestamps)")
    if all(w.per_txn_us for w in s.cpu.values()):
        click.echo(
            "CPU per one-row transaction, µs, by process (its CPU over "
            f"{STEADY_S - 1} s of the window ÷ the source's commits):"
        )
        click.echo("                                    " + "".join(f"{r:>9,}/s" for r in RATES))
        for group in _CPU_GROUPS:
            click.echo(
                f"  {group:34s}" + "".join(f"{s.cpu[r].per_txn_us[group]:11.0f}" for r in RATES)
            )
        totals = [sum(s.cpu[r].per_txn_us.values()) for r in RATES]
        click.echo(f"  {'total':34s}" + "".join(f"{t:11.0f}" for t in totals))
        click.echo(
            f"  {'source commits/s in the window':34s}"
            + "".join(f"{s.cpu[r].rate:11,.0f}" for r in RATES)
        )
        click.echo(
            f"  {f'whole machine busy, of {os.cpu_count()} cores':34s}"
            + "".join(f"{s.cpu[r].machine_cores:11.2f}" for r in RATES)
        )


@click.command()
@click.option(
    "--only",
    type=click.Choice(["drain", "steady"]),
    default=None,
    help="Run one part alone: the backlog drain, or the steady latency and new tables.",
)
@click.option(
    "--logs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the steady part's capture and writer logs in this directory.",
)
def main(only: str | None, logs: Path | None) -> None:
    admin = os.environ.get("BOOKAUDIT_ADMIN_DSN")
    bootstrap = os.environ.get("BOOKAUDIT_KAFKA_BOOTSTRAP")
    if not admin or not bootstrap:
        raise click.ClickException('run under the stack: eval "$(python -m devstack env)"')
    d = drain(admin, bootstrap) if only in (None, "drain") else None
    s = steady(admin, bootstrap, logs) if only in (None, "steady") else None
    if d is not None:
        report_drain(d)
    if s is not None:
        report_steady(s)


if __name__ == "__main__":
    main()
