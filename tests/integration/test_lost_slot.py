"""A dropped slot stops the capture with what was lost; `--accept-gap` records the gap, which
travels to the warehouse and shows in `history` and `warehouse verify`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bookaudit.config import Secret
from bookaudit.model import parse_lsn
from bookaudit.web.app import create_app
from bookaudit.web.serve import ServeSettings, reader_dsn
from devstack import StackEnv
from tests.integration.harness import Pipeline


@pytest.fixture
def logical(stack: StackEnv) -> Iterator[Pipeline]:
    p = Pipeline(stack, mode="logical").create()
    yield p
    p.drop()


def test_dropped_slot_is_named_and_replaced_only_with_accept_gap(logical: Pipeline) -> None:
    p = logical
    [booking] = p.seed(1)
    p.flow()
    with p.source() as conn:
        state = conn.execute(
            "SELECT confirmed_lsn::text FROM bookaudit.capture_state WHERE slot = %s", (p.slot,)
        ).fetchone()
        assert state is not None
        confirmed = str(state[0])
        conn.execute("SELECT pg_drop_replication_slot(%s)", (p.slot,))
        conn.execute("UPDATE bookings SET price = 120.00 WHERE id = %s", (booking,))  # lost
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
        conn.execute("UPDATE bookings SET price = 130.00 WHERE id = %s", (booking,))
    p.capture()  # the replacement slot streams on, without the flag
    p.consume()

    prices = p.warehouse(
        "SELECT after ->> 'price' FROM audit.row_changes WHERE table_name = 'bookings' "
        "ORDER BY commit_lsn"
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
