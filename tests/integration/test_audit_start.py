"""Where the audit starts: `source install` creates the slot (or the outbox boundary) and stages
a baseline of the rows that exist, so a capture started any time later misses nothing and
doubles nothing at the boundary, in both modes."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bookaudit.cdc.settings import CaptureStats
from bookaudit.errors import SourceCheckError
from bookaudit.model import BASELINE_LABEL
from bookaudit.source.audit_start import install
from bookaudit.source.install import TableName
from devstack import StackEnv
from tests.integration.harness import Pipeline, private_server, wait_for
from tests.integration.workloads import SourceState, book, replayed, source_state


@dataclass(frozen=True)
class Orders:
    """A table the team already has, full of rows, as each schema spells it: the sample's
    `work_orders` (bigint key, a generated column) in `public`, or the jobs schema's own
    `ops.jobs` (a text key the application makes up, outside `public`). Statements name row
    number %(n)s through `numbered`, the SQL of its key."""

    table: str  # as `--table` takes it
    columns: tuple[str, ...]  # compared with the warehouse; the first is the key
    setup: tuple[str, ...]  # the owner's statements before the rows go in (%(rows)s)
    fill: str  # rows %(first)s to %(last)s
    numbered: str
    amount: str
    status: str
    memo: str  # a nullable text column
    insert: str  # one new row, numbered %(n)s

    @property
    def name(self) -> str:
        return TableName.parse(self.table).name

    @property
    def key(self) -> str:
        return self.columns[0]

    def sql(self, template: str) -> sql.Composed:
        """`template` with {table}, {key}, {amount}, {status}, {memo} and {n} (the numbered key)."""
        t = TableName.parse(self.table)
        return sql.SQL(template).format(
            table=sql.Identifier(t.schema, t.name),
            key=sql.Identifier(self.key),
            amount=sql.Identifier(self.amount),
            status=sql.Identifier(self.status),
            memo=sql.Identifier(self.memo),
            n=sql.SQL(self.numbered),
        )

    def key_of(self, n: int) -> str:
        """Row number `n`'s key as text."""
        return str(n) if self.numbered == "%(n)s::bigint" else f"J-{n:07d}"


WORK_ORDERS = Orders(
    table="work_orders",
    columns=("order_no", "client_ref", "status", "amount", "due", "urgent", "memo"),
    setup=(
        """
CREATE TABLE work_orders (
    order_no  bigint PRIMARY KEY,
    client_ref text NOT NULL,
    status    text NOT NULL,
    amount    numeric(12, 2) NOT NULL,
    due       timestamptz,
    urgent    boolean NOT NULL DEFAULT false,
    memo      text,
    amount_x2 numeric GENERATED ALWAYS AS (amount * 2) STORED
)
""",
    ),
    fill="""
INSERT INTO work_orders (order_no, client_ref, status, amount, due, urgent, memo)
SELECT g, 'C-' || (g %% 977), 'open', (g %% 500) + 0.25,
       timestamptz '2026-12-01 08:00+00' + g * interval '1 minute', g %% 7 = 0,
       CASE WHEN g %% 5 = 0 THEN NULL ELSE 'order ' || g END
FROM generate_series(%(first)s::bigint, %(last)s) g
""",
    numbered="%(n)s::bigint",
    amount="amount",
    status="status",
    memo="memo",
    insert="INSERT INTO work_orders (order_no, client_ref, status, amount) "
    "VALUES (%(n)s, 'C-new', 'open', 10.50)",
)

JOBS_TABLE = Orders(
    table="ops.jobs",
    columns=(
        "job_no",
        "client_ref",
        "title",
        "window_from",
        "window_to",
        "state",
        "quoted_total",
        "technician",
        "modified_at",
    ),
    setup=(
        "INSERT INTO ops.clients (client_no, full_name) "
        "SELECT 'C-' || g, 'Client ' || g FROM generate_series(0, 976) g",
    ),
    fill="""
INSERT INTO ops.jobs (job_no, client_ref, title, window_from, window_to, quoted_total, technician)
SELECT 'J-' || lpad(g::text, 7, '0'), 'C-' || (g %% 977), 'job ' || g,
       timestamptz '2026-12-01 08:00+00' + g * interval '1 minute',
       timestamptz '2026-12-01 10:00+00' + g * interval '1 minute',
       (g %% 500) + 0.25, CASE WHEN g %% 5 = 0 THEN NULL ELSE 'tech ' || (g %% 13) END
FROM generate_series(%(first)s::int, %(last)s) g
""",
    numbered="'J-' || lpad(%(n)s::text, 7, '0')",
    amount="quoted_total",
    status="state",
    memo="technician",
    insert="INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
    "VALUES ('J-' || lpad(%(n)s::text, 7, '0'), 'C-1', 'new', 10.50)",
)

ORDERS = {"sample": WORK_ORDERS, "jobs": JOBS_TABLE}


def _orders(p: Pipeline) -> Orders:
    return ORDERS[p.schema.name]


def _work_orders(p: Pipeline, rows: int) -> Orders:
    """The team's own table, created by its owner, with the rows it already holds."""
    orders = _orders(p)
    p.migrate(*orders.setup)
    with p.owner() as conn:
        conn.execute(orders.fill, {"first": 1, "last": rows})
    return orders


def _source_state(p: Pipeline) -> SourceState:
    orders = _orders(p)
    with p.source() as conn:
        return source_state(conn, orders.sql("{table}"), orders.columns, (orders.key,))


def _assert_audit_equals_source(p: Pipeline) -> Counter[str]:
    orders = _orders(p)
    state, actions = replayed(p, orders.name, (orders.key,))
    source = _source_state(p)
    missing = source.keys() - state.keys()
    extra = state.keys() - source.keys()
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    differ = [k for k in source if source[k] != state[k]]
    assert not differ, [(source[k], state[k]) for k in differ[:3]]
    return actions


class Writer(threading.Thread):
    """The application going on writing: small transactions as a non-stop stream."""

    def __init__(self, p: Pipeline, rows: int) -> None:
        super().__init__(daemon=True)
        self.p, self.rows = p, rows
        self.stop = threading.Event()
        self.install_returned = threading.Event()
        self.after_install: list[int] = []  # 32-bit txids committed after install returned
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        next_id = self.rows + 1
        orders = _orders(self.p)
        update = orders.sql("UPDATE {table} SET {amount} = {amount} + 1, {status} = %(status)s "
                            "WHERE {key} = {n}")  # fmt: skip
        insert = sql.SQL(orders.insert)
        delete = orders.sql("DELETE FROM {table} WHERE {key} = {n}")
        try:
            with self.p.source(application_name="orders-app") as conn:
                while not self.stop.is_set():
                    # SET LOCAL works before and after the install: before, nobody reads it.
                    conn.execute("SET LOCAL bookaudit.actor = 'orders-app'")
                    pick = rng.random()
                    if pick < 0.6:
                        status = rng.choice(["open", "planned", "done"])
                        n = rng.randint(1, next_id - 1)
                        cur = conn.execute(update, {"status": status, "n": n})
                    elif pick < 0.85:
                        cur = conn.execute(insert, {"n": next_id})
                        next_id += 1
                    else:
                        cur = conn.execute(delete, {"n": rng.randint(1, next_id - 1)})
                    changed = cur.rowcount > 0
                    row = conn.execute(
                        "SELECT pg_current_xact_id()::text::bigint & 4294967295"
                    ).fetchone()
                    conn.commit()
                    self.commits += 1
                    # An UPDATE or DELETE that found no row changed nothing to audit.
                    if self.install_returned.is_set() and changed and row is not None:
                        self.after_install.append(int(row[0]))
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error


def _install_under_writes(p: Pipeline, rows: int) -> Writer:
    orders = _work_orders(p, rows)
    writer = Writer(p, rows)
    writer.start()
    wait_for("the application to write", lambda: writer.commits >= 20)
    p.install([orders.table])
    writer.install_returned.set()
    before = writer.commits
    wait_for("writes after the install", lambda: writer.commits >= before + 50)
    writer.finish()
    return writer


def test_install_then_writes_then_a_later_first_capture_audits_everything(
    fresh: Pipeline,
) -> None:
    p = fresh
    orders = _work_orders(p, 40)
    out = p.cli("source", "install", "--table", orders.table, "--grant-to", p.app_role).stdout
    where = r"LSN [0-9A-F]+/[0-9A-F]+" if p.mode == "logical" else r"commit \d+"
    assert re.search(rf"audit complete from {where} \(\d{{4}}-\d\d-\d\d [\d:]+\+00:00\); "
                     r"40 existing rows staged as the baseline", out), out  # fmt: skip
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dispatch', role => 'dispatcher')")
        conn.execute(
            orders.sql("UPDATE {table} SET {status} = 'planned' WHERE {key} <= {n}"), {"n": 10}
        )
        conn.execute(orders.fill, {"first": 41, "last": 45})
        for n in (2, 4, 6):
            conn.execute(orders.sql("DELETE FROM {table} WHERE {key} = {n}"), {"n": n})
    # No capture ran yet: a deploy starts it later, and it streams from the install's point.
    assert p.warehouse("SELECT count(*) FROM audit.row_changes") == [(0,)]
    p.flow()
    assert p.capture().baseline == 0, "a second capture sent the baseline again"
    actions = _assert_audit_equals_source(p)
    assert actions == {"existing": 40, "update": 10, "insert": 5, "delete": 3}
    baseline = p.warehouse(
        "SELECT DISTINCT actor, actor_origin, capture_mode FROM audit.row_changes "
        "WHERE action = 'existing'"
    )
    assert baseline == [(BASELINE_LABEL, "baseline", p.mode)]
    # The baseline sorts before every change, by commit time as by position.
    order = p.warehouse(
        "SELECT bool_and(b.committed_at <= c.committed_at AND b.commit_lsn < c.commit_lsn) "
        "FROM audit.row_changes b, audit.row_changes c "
        "WHERE b.action = 'existing' AND c.action <> 'existing'"
    )
    assert order == [(True,)]


def test_install_while_the_application_writes(fresh: Pipeline) -> None:
    writer = _install_under_writes(fresh, 2000)
    fresh.flow()
    actions = _assert_audit_equals_source(fresh)
    assert actions["existing"] > 0
    audited = {r[0] for r in fresh.warehouse("SELECT DISTINCT txid FROM audit.row_changes")}
    assert set(writer.after_install) <= audited


def _capture_with_writers_running(p: Pipeline) -> CaptureStats:
    """Capture and audit writers at once, as deployed: a writer process follows the stream while
    the capture sends the baseline, and once the capture is done a second writer joins the
    group for the backlog and exits when the group has committed all of it. The writers' work
    (most of this test's time) overlaps the capture's and is shared by two processes."""
    # Once the block ends the group has committed every event the capture sent: the follower,
    # stopped then, has nothing left.
    with p.running("consume", "audit", stop_timeout=60):
        stats = p.capture()
        p.consume(batch_size=5000)
    return stats


@pytest.mark.slow
def test_200k_existing_rows_and_concurrent_writes_match_the_source_row_by_row(
    fresh: Pipeline,
) -> None:
    # 200,000 rows on the sample schema. The jobs variant proves the same boundary with text
    # keys outside `public` and a map of its own; the size is proven once, and 20,000 rows
    # still span four baseline chunks while the application writes.
    writer = _install_under_writes(fresh, 200_000 if fresh.schema.name == "sample" else 20_000)
    stats = _capture_with_writers_running(fresh)
    assert stats.baseline > 0 and writer.after_install
    actions = _assert_audit_equals_source(fresh)
    assert actions["existing"] == stats.baseline
    # One snapshot event says it is the last, as Debezium marks the end of a snapshot.
    assert any("baseline: done" in line for line in fresh.logs)


def _staged_sent(p: Pipeline) -> int:
    with psycopg.connect(p.source_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(sent), 0) FROM bookaudit.baseline").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_baseline_resumes_after_kill_9_without_doubles(fresh: Pipeline) -> None:
    p = fresh
    # The jobs variant resumes in the order of its text keys; 15,000 rows leave it two chunks
    # after the kill as the sample's 30,000 leave five: the size is not what it proves.
    rows = 30_000 if p.schema.name == "sample" else 15_000
    orders = _work_orders(p, rows)
    p.install([orders.table])
    with p.running("capture") as capture:
        wait_for("the baseline to be partly sent", lambda: _staged_sent(p) >= 5000)
        os.kill(capture.pid, signal.SIGKILL)
        capture.wait(timeout=30)
    sent = _staged_sent(p)
    assert 0 < sent < rows, "the capture was not killed in the middle of the baseline"
    stats = p.capture()
    assert stats.baseline == rows - sent  # resumed after what Kafka had acknowledged
    p.consume(batch_size=5000)
    actions = _assert_audit_equals_source(p)
    assert actions == {"existing": rows}
    with psycopg.connect(p.source_dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'bookaudit' "
            "AND tablename LIKE 'baseline\\_%%'"
        ).fetchone()
    assert left == (0,), "the relayed copy was not dropped"


def test_snapshot_never_records_only_changes(fresh: Pipeline) -> None:
    orders = _work_orders(fresh, 30)
    out = fresh.cli(
        "source", "install", "--table", orders.table, "--snapshot", "never",
        "--grant-to", fresh.app_role,
    ).stdout  # fmt: skip
    assert "audit complete from" in out and "baseline" not in out
    with fresh.source() as conn:
        conn.execute(orders.sql("UPDATE {table} SET {memo} = 'late' WHERE {key} = {n}"), {"n": 3})
    fresh.flow()
    assert fresh.warehouse("SELECT action, row_key FROM audit.row_changes") == [
        ("update", {orders.key: orders.key_of(3)})
    ]


def test_a_lost_slot_is_a_named_error_and_uninstall_removes_the_slot(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    if p.mode == "logical":
        with psycopg.connect(p.source_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (p.slot,))
        lost = p.cli("capture", "--exit-when-idle", check=False)
        assert lost.returncode == 2
        [line] = lost.stderr.strip().splitlines()
        # Lost before any capture ran: the capture does not quietly make a new one.
        assert line.startswith(f"bookaudit: error: replication slot '{p.slot}' does not exist")
        assert "every change since install may be missing" in line
        assert "`bookaudit source install` again for a fresh baseline" in line
        p.install()  # recreates the slot and a baseline
    book(p)
    p.capture()
    p.cli("source", "uninstall")
    with psycopg.connect(p.source_dsn, autocommit=True) as conn:
        slots = conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone()
        schema = conn.execute("SELECT to_regnamespace('bookaudit') IS NULL").fetchone()
    assert (slots, schema) == ((0,), (True,))


def _installed(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regnamespace('bookaudit') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_install_refuses_a_role_without_replication(stack: StackEnv) -> None:
    p = Pipeline(stack, mode="logical").create(install=False)
    role = f"{p.name}_owner"
    try:
        with psycopg.connect(p.source_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
            conn.execute(f'GRANT CREATE ON DATABASE "{p.name}_src" TO "{role}"')
            conn.execute(f'ALTER TABLE bookings OWNER TO "{role}"')
        owner_dsn = make_conninfo(p.source_dsn, user=role)
        env = {**p.env(), "BOOKAUDIT_SOURCE_DSN": owner_dsn}
        result = p.cli("source", "install", "--table", "bookings", check=False, env=env)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"bookaudit: error: role '{role}' lacks REPLICATION, which logical mode needs for "
            f"its slot: ALTER ROLE {role} REPLICATION, or install with --mode trigger"
        ]
        assert not _installed(p.source_dsn), "a refused install changed the source"
    finally:
        p.drop()
        with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_install_refuses_when_no_replication_slot_is_free() -> None:
    with private_server({"max_replication_slots": "1"}) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bookings (id int PRIMARY KEY)")
            conn.execute("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')")
        tables: Sequence[TableName] = [TableName.parse("bookings")]
        with pytest.raises(
            SourceCheckError, match=r"^no replication slot is free \(max_replication_slots = 1\)"
        ):
            install(dsn, tables, publication="bookaudit", slot="bookaudit", mode="logical")
        assert not _installed(dsn), "a refused install changed the source"


@pytest.fixture(params=["logical", "trigger"])
def fresh_sample(stack: StackEnv, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """The demo creates and plays the sample schema itself: no other schema applies."""
    p = Pipeline(stack, mode=request.param).create(install=False)
    yield p
    p.drop()


def test_demo_shows_a_pre_existing_booking_from_its_baseline(fresh_sample: Pipeline) -> None:
    fresh = fresh_sample
    out = fresh.cli("demo", "run").stdout
    found = re.search(r"Timeline of booking (\d+), which existed before the install:", out)
    assert found is not None, out
    section = out[found.end() :].split("Timeline of booking")[0]
    rows = [line for line in section.splitlines() if line.startswith("20")]
    # It starts with every field as it stood at install, then the day's change by dana.
    assert len(rows) == 2, section
    assert "Existing at install" in rows[0] and BASELINE_LABEL in rows[0]
    assert "service Boiler service" in rows[0] and "price 95.00" in rows[0]
    assert "dana (dispatcher)" in rows[1] and "status requested → scheduled" in rows[1]
    history = fresh.cli("history", "booking", found.group(1), "--format", "json").stdout
    assert '"action": "existing"' in history
