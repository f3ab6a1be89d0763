"""A dropped slot stops the capture with what was lost; `--accept-gap` records the gap, which
travels to the warehouse and shows in `history` and `warehouse verify`."""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from bookaudit.cdc.capture import Capture
from bookaudit.cdc.gaps import SlotCondition, SlotLostError
from bookaudit.cdc.settings import CaptureSettings
from bookaudit.config import Secret
from bookaudit.demo.day import create_app_role
from bookaudit.model import parse_lsn
from bookaudit.source.audit_start import install
from bookaudit.source.install import TableName
from bookaudit.web.app import create_app
from bookaudit.web.serve import ServeSettings, reader_dsn
from devstack import StackEnv, _postgres
from tests.integration.harness import Pipeline
from tests.integration.schemas import Schema


@pytest.fixture
def logical(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    """Each schema, in logical mode: only a replication slot can be lost."""
    p = Pipeline(stack, mode="logical", schema=schema).create()
    yield p
    p.drop()


def test_dropped_slot_is_named_and_replaced_only_with_accept_gap(logical: Pipeline) -> None:
    p = logical
    [booking] = p.seed(1)
    p.flow()
    with p.owner() as conn:  # the DBA's view of the source, and the DBA's mistake
        state = conn.execute(
            "SELECT confirmed_lsn::text FROM bookaudit.capture_state WHERE slot = %s", (p.slot,)
        ).fetchone()
        assert state is not None
        confirmed = str(state[0])
        conn.execute("SELECT pg_drop_replication_slot(%s)", (p.slot,))
    with p.source() as conn:
        p.schema.set_price(conn, [booking], "120.00")  # lost
    assert parse_lsn(confirmed) > 0

    refused = p.cli("capture", "--exit-when-idle", check=False)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert f"slot {p.slot!r} does not exist" in lines[0]
    assert f"after {confirmed}" in lines[0] and "--accept-gap" in lines[0]
    with p.source() as conn:
        slots = conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (p.slot,)
        ).fetchone()
    assert slots == (0,), "the capture must not create a replacement on its own"

    accepted = p.cli("capture", "--exit-when-idle", "--accept-gap")
    assert "gap accepted" in accepted.stderr
    with p.source() as conn:
        p.schema.set_price(conn, [booking], "130.00")
    p.capture()  # the replacement slot streams on, without the flag
    p.consume()

    bookings = p.schema.bookings_table
    prices = p.warehouse(
        "SELECT after ->> %s FROM audit.row_changes WHERE schema_name = %s AND table_name = %s "
        "ORDER BY commit_lsn",
        (p.schema.names["price"], bookings.schema, bookings.name),
    )
    assert prices == [("100.00",), ("130.00",)]
    gaps = p.warehouse(
        "SELECT after ->> 'last_confirmed_lsn', after ->> 'slot' FROM audit.row_changes "
        "WHERE schema_name = 'bookaudit' AND table_name = 'capture_gaps'"
    )
    assert gaps == [(confirmed, p.slot)]

    verify = p.cli("warehouse", "verify")
    assert "intact" in verify.stdout
    assert f"GAP: source 'bookings': changes committed after {confirmed}" in verify.stdout
    history = p.cli("history", "booking", str(booking))
    assert f"audit gap: source 'bookings': changes committed after {confirmed}" in history.stderr

    # The web pages say it too, above every page, reading as the read-only role.
    app = create_app(
        ServeSettings(Secret(reader_dsn(p.warehouse_dsn)), "127.0.0.1", 0, None, None, None, None)
    )
    page = app.test_client().get(f"/bookings/{booking}").get_data(as_text=True)
    assert f"Audit gap: source &#39;bookings&#39;: changes committed after {confirmed}" in page


@pytest.fixture
def small_wal_server() -> Iterator[str]:
    """A private server that keeps at most 1 MB of WAL for a slot, so a slot can be invalidated
    for real without touching the shared one."""
    bin_dir = _postgres.newest_bin_dir()
    assert bin_dir is not None, "PostgreSQL binaries are missing"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    pg_dir = Path(tempfile.mkdtemp(prefix="ba-smallwal-"))
    _postgres.init_cluster(bin_dir, pg_dir, port)
    with (pg_dir / "data" / "postgresql.conf").open("a") as conf:
        conf.write("max_slot_wal_keep_size = 1MB\nmin_wal_size = 32MB\nmax_wal_size = 64MB\n")
    pid = _postgres.start(bin_dir, pg_dir, port)
    try:
        yield _postgres.dsn(port, "postgres")
    finally:
        _postgres.stop(bin_dir, pg_dir, pid)
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.mark.slow
def test_invalidated_slot_is_named_and_replaced_only_with_accept_gap(
    small_wal_server: str, stack: StackEnv, schema: Schema
) -> None:
    dsn = small_wal_server
    schema.create(dsn)
    tables = [TableName.parse(t) for t in schema.tables]
    app = create_app_role(dsn, "app_writer", sorted({t.schema for t in tables}))
    install(
        dsn,
        tables,
        publication="bookaudit",
        slot="audit_slot",
        mode="logical",
        grant_to=["app_writer"],
    )

    def add_customer(name: str) -> None:
        """One change, written by the application."""
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute(schema.writes.customer, {"name": name})

    prefix = "inval" + uuid.uuid4().hex[:8]
    settings = CaptureSettings(
        source_dsn=dsn,
        kafka_bootstrap=stack.kafka_bootstrap,
        slot="audit_slot",
        publication="bookaudit",
        topic_prefix=prefix,
        source_name=schema.name,
        exit_when_idle=True,
    )
    try:
        _invalidate_and_replace(dsn, settings, add_customer)
    finally:
        Pipeline(stack, name=prefix).drop_topics()  # the shared broker keeps what is left


def _invalidate_and_replace(
    dsn: str, settings: CaptureSettings, add_customer: Callable[[str], None]
) -> None:
    said: list[str] = []
    Capture(settings, said.append).run()  # streams from the slot the install created
    add_customer("kept")
    Capture(settings, said.append).run()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Well past 1 MB of WAL behind the slot, then a checkpoint: the server gives it up.
        for _ in range(4):
            add_customer("x" * 100)
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        status = conn.execute(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'audit_slot'"
        ).fetchone()
    assert status == ("lost",)

    with pytest.raises(SlotLostError) as refused:
        Capture(settings, said.append).run()
    message = str(refused.value)
    assert "'audit_slot' was invalidated" in message and "max_slot_wal_keep_size" in message
    assert "changes committed after " in message and "--accept-gap" in message

    Capture(replace(settings, accept_gap=True), said.append).run()
    assert any("gap accepted" in line for line in said)
    add_customer("after the gap")
    with psycopg.connect(dsn, autocommit=True) as conn:
        gaps = conn.execute("SELECT slot, reason FROM bookaudit.capture_gaps").fetchall()
        wal_status = conn.execute(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'audit_slot'"
        ).fetchone()
    assert gaps == [("audit_slot", f"slot {SlotCondition(True, 'lost').lost}")]
    assert wal_status is not None and wal_status[0] != "lost"
    stats = Capture(settings, said.append).run()
    assert stats.changes == 1  # the new slot streams on without the flag
