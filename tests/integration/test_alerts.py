"""The alerting job on the real stack: approved changes pass, offending ones alert exactly once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from bookaudit.consumers.alerts.job import AlertsJob, decode_batch, instance_lock
from bookaudit.consumers.alerts.ruleset import DEFAULT_RULES
from bookaudit.kafka.alert import decode_alert, encode_alert
from tests.integration.harness import Pipeline
from tests.integration.workloads import alert_ids_on_topic, topic_records


def book(p: Pipeline, price: str = "100.00") -> int:
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        row = conn.execute("INSERT INTO customers (name) VALUES ('C') RETURNING id").fetchone()
        assert row is not None
        booking = conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price) "
            "VALUES (%s, 'Boiler check', 'Elm St 4', %s::numeric) RETURNING id",
            (row[0], price),
        ).fetchone()
        assert booking is not None
        return int(str(booking[0]))


def set_price(
    p: Pipeline,
    booking: int,
    price: str,
    actor: str | None = "dana",
    role: str | None = "dispatcher",
    approval_ref: str | None = None,
) -> None:
    with p.source(application_name="psql" if actor is None else "bookings-app") as conn:
        if actor is not None:
            conn.execute(
                "SELECT bookaudit.set_actor(%s, role => %s, approval_ref => %s)",
                (actor, role, approval_ref),
            )
        conn.execute("UPDATE bookings SET price = %s::numeric WHERE id = %s", (price, booking))


def send_invoice(p: Pipeline, booking: int, sent: bool = True) -> None:
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('olga', role => 'billing')")
        conn.execute(
            "INSERT INTO invoices (booking_id, number, amount, status, sent_at) "
            "VALUES (%s, 'INV-' || %s || '-' || %s, 100, %s, CASE WHEN %s THEN now() END)",
            (booking, booking, str(sent), "sent" if sent else "draft", sent),
        )


def alerts(p: Pipeline) -> list[tuple[Any, ...]]:
    return p.warehouse(
        "SELECT rule, booking_id, actor, actor_role, old_price::text, new_price::text, "
        "change_pct::text FROM audit.alerts ORDER BY commit_lsn, sequence, rule"
    )


def test_change_by_an_allowed_role_raises_nothing(pipeline: Pipeline) -> None:
    booking = book(pipeline)
    set_price(pipeline, booking, "105.00", actor="alice", role="admin")
    pipeline.capture()
    stats = pipeline.alerts()
    assert stats.changes == 1  # the change was judged, and passed
    assert alerts(pipeline) == []
    assert alert_ids_on_topic(pipeline) == []


def test_change_with_an_approval_reference_raises_nothing(pipeline: Pipeline) -> None:
    booking = book(pipeline)
    send_invoice(pipeline, booking)
    # A dispatcher, 50 % up, after the invoice: every default rule would fire but for the approval.
    set_price(pipeline, booking, "150.00", approval_ref="APR-7")
    pipeline.capture()
    stats = pipeline.alerts()
    assert (stats.changes, stats.invoices) == (1, 1)
    assert alerts(pipeline) == []


def test_unapproved_change_raises_exactly_one_alert_in_every_output(pipeline: Pipeline) -> None:
    booking = book(pipeline)
    set_price(pipeline, booking, "105.00")
    pipeline.flow()  # capture and the audit writer, for the link back to the audit entry

    run = pipeline.cli("consume", "alerts", "--exit-when-idle")
    assert alerts(pipeline) == [
        ("price-by-unauthorised-role", str(booking), "dana", "dispatcher", "100.00", "105.00",
         "5.00"),
    ]  # fmt: skip
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == 1
    document = lines[0]
    change = pipeline.warehouse(
        "SELECT id, source, commit_lsn::text, sequence, txid, committed_at FROM audit.row_changes "
        "WHERE table_name = 'bookings' AND action = 'update'"
    )
    change_id, source, commit_lsn, sequence, txid, committed_at = change[0]
    assert document["alert_id"] == f"{source}:{commit_lsn}:{sequence}:price-by-unauthorised-role"
    assert document["severity"] == "high"
    assert (document["old_price"], document["new_price"], document["change_pct"]) == (
        "100.00",
        "105.00",
        "5.00",
    )
    assert (document["actor"], document["actor_role"], document["txid"]) == (
        "dana",
        "dispatcher",
        txid,
    )
    assert document["committed_at_ms"] == int(committed_at.timestamp() * 1000)
    assert document["audit_entry"]["commit_lsn"] == commit_lsn

    on_topic = topic_records(pipeline, pipeline.alerts_topic)
    assert [(r.key, decode_alert(r.value or b"")) for r in on_topic] == [
        (str(booking).encode(), document)
    ]
    since = (committed_at - timedelta(minutes=1)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    listed = json.loads(pipeline.cli("alerts", "list", "--since", since, "--format", "json").stdout)
    assert listed == [{**document, "audit_change": change_id}]
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert (
        json.loads(pipeline.cli("alerts", "list", "--since", future, "--format", "json").stdout)
        == []
    )

    # A replay from offset 0 by another group, and a restart of the first, add nothing anywhere.
    pipeline.alerts(group_id=pipeline.alerts_group_id + "-replay")
    again = pipeline.cli("consume", "alerts", "--exit-when-idle")
    assert again.stdout == ""
    assert len(alerts(pipeline)) == 1
    assert alert_ids_on_topic(pipeline) == [document["alert_id"]]


def test_change_after_the_invoice_was_sent_raises_one_alert(pipeline: Pipeline) -> None:
    booking, other = book(pipeline), book(pipeline)
    set_price(pipeline, booking, "101.00", actor="alice", role="admin")  # before: allowed
    send_invoice(pipeline, other, sent=False)  # a draft is not sent
    set_price(pipeline, other, "101.00", actor="alice", role="admin")
    send_invoice(pipeline, booking)
    set_price(pipeline, booking, "102.00", actor="alice", role="admin")  # after: alert
    pipeline.capture()
    stats = pipeline.alerts()
    assert (stats.changes, stats.invoices) == (3, 1)
    assert alerts(pipeline) == [
        ("price-change-after-invoice-sent", str(booking), "alice", "admin", "101.00", "102.00",
         "0.99"),
    ]  # fmt: skip


def test_invoice_read_after_the_change_still_raises_the_alert_once(pipeline: Pipeline) -> None:
    """Topics are read in no common order: hand the job the change first, then the invoice."""
    booking = book(pipeline)
    send_invoice(pipeline, booking)
    set_price(pipeline, booking, "101.00", actor="alice", role="admin")
    pipeline.capture()
    bookings = topic_records(pipeline, f"{pipeline.prefix}.public.bookings")
    invoices = topic_records(pipeline, f"{pipeline.prefix}.public.invoices")
    job = AlertsJob(pipeline.alerts_settings(DEFAULT_RULES), DEFAULT_RULES, pipeline.logs.append)
    try:
        first = job.record(decode_batch(bookings, DEFAULT_RULES))
        assert first == []  # no invoice known yet
        second = job.record(decode_batch(invoices, DEFAULT_RULES))
        assert [a.document["rule"] for a in second] == ["price-change-after-invoice-sent"]
        # The other order, and both at once, find the same alert already recorded.
        assert job.record(decode_batch(invoices + bookings, DEFAULT_RULES)) == []
    finally:
        job.close()
    assert [a[0] for a in alerts(pipeline)] == ["price-change-after-invoice-sent"]


def test_alerts_a_dead_instance_produced_but_did_not_record_are_not_produced_again(
    pipeline: Pipeline,
) -> None:
    """The crash window between Kafka's acknowledgment and recording the delivery."""
    booking = book(pipeline)
    for price in ("101.00", "102.00", "103.00"):
        set_price(pipeline, booking, price)
    pipeline.capture()
    bookings = topic_records(pipeline, f"{pipeline.prefix}.public.bookings")
    job = AlertsJob(pipeline.alerts_settings(DEFAULT_RULES), DEFAULT_RULES, pipeline.logs.append)
    try:
        assert job.store.hold_lock(instance_lock(job.instance))
        recorded = job.record(decode_batch(bookings, DEFAULT_RULES))
        assert len(recorded) == 3
        producer = Producer({"bootstrap.servers": pipeline.stack.kafka_bootstrap})
        producer.produce(
            pipeline.alerts_topic,
            key=str(booking).encode(),
            value=encode_alert(recorded[0].document),
        )
        assert producer.flush(30) == 0
    finally:
        job.close()  # dies: its instance lock goes with its connection

    stats = pipeline.alerts()  # replays the changes, and takes over the dead instance's outbox
    assert (stats.alerts, stats.recovered) == (0, 2)
    assert sorted(alert_ids_on_topic(pipeline)) == sorted(a.alert_id for a in recorded)
    delivered = pipeline.warehouse(
        "SELECT alert, kafka_offset IS NOT NULL FROM audit.alert_deliveries "
        "WHERE channel = 'kafka' ORDER BY alert"
    )
    assert delivered == [(a.id, True) for a in recorded]


def test_alert_tables_are_append_only(pipeline: Pipeline) -> None:
    set_price(pipeline, book(pipeline), "500.00", actor=None)
    pipeline.capture()
    pipeline.alerts()
    assert len(alerts(pipeline)) == 2  # no role, and over 10 %
    for statement in (
        "UPDATE audit.alerts SET severity = 'low'",
        "DELETE FROM audit.alert_deliveries",
        "DELETE FROM audit.alert_outbox",
        "TRUNCATE audit.alert_context",
    ):
        with (
            psycopg.connect(pipeline.warehouse_dsn) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute(statement)


def test_demo_ends_with_the_alerts_for_the_raw_price_edit(pipeline: Pipeline) -> None:
    out = pipeline.cli("demo", "run").stdout
    history, _, tail = out.partition("Alerts for booking")
    raw_edit = [line for line in history.splitlines() if "via psql" in line]
    # The labelled timeline's entry, the same change in the day's log, the log's actor total.
    assert "Price changed" in raw_edit[0] and "price 189.50 → 169.50" in raw_edit[0]
    assert len(raw_edit) == 3 and "Price changed" in raw_edit[1]
    lines = tail.splitlines()
    rows = [line.split() for line in lines if line.startswith("20")]
    assert [(r[2], r[3], r[5]) for r in rows] == [
        ("high", "price-by-unauthorised-role", "postgres"),
        ("high", "large-price-change-without-approval", "postgres"),
        ("critical", "price-change-after-invoice-sent", "postgres"),
    ]
    assert [tuple(r[-5:-2]) for r in rows] == [("189.50", "169.50", "-10.55")] * 3
    # The approved raise (alice, APR-1042) and everyone else's work raised nothing.
    assert "alice" not in tail and "finn" not in tail
