"""The alerting job on the real stack: approved changes pass, offending ones alert exactly once,
on the sample schema and on one that shares none of its names (the rules follow the map)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from bookaudit.consumers.alerts.job import AlertsJob, decode_batch, instance_lock
from bookaudit.consumers.alerts.ruleset import default_rules
from bookaudit.kafka.alert import decode_alert, encode_alert
from tests.integration.harness import Pipeline
from tests.integration.schemas import Key
from tests.integration.workloads import alert_ids_on_topic, booking_topic, topic_records


def book(p: Pipeline, price: str = "100.00") -> Key:
    """One booking at `price`, written by a dispatcher in the schema's own tables."""
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        [booking] = p.schema.seed(conn, 1, price, name="C")
        return booking


def set_price(
    p: Pipeline,
    booking: Key,
    price: str,
    actor: str | None = "dana",
    role: str | None = "dispatcher",
    approval_ref: str | None = None,
) -> None:
    """The booking's price column as the map names it (`price`, `quoted_total`) to `price`."""
    with p.source(application_name="psql" if actor is None else "bookings-app") as conn:
        if actor is not None:
            conn.execute(
                "SELECT bookaudit.set_actor(%s, role => %s, approval_ref => %s)",
                (actor, role, approval_ref),
            )
        conn.execute(p.schema.writes.price, {"price": price, "booking": booking})


def send_invoice(p: Pipeline, booking: Key, sent: bool = True) -> None:
    """An invoice for 100 on the booking: sent now, or a draft (the map's sent column unset)."""
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('olga', role => 'billing')")
        conn.execute(
            p.schema.writes.invoice,
            {
                "booking": booking,
                "number": f"INV-{booking}-{sent}",
                "amount": 100,
                "sent": datetime.now(UTC) if sent else None,
            },
        )


def invoices_topic(p: Pipeline) -> str:
    [invoices] = [e for e in p.schema.entity_map.related if e.kind == "invoice"]
    return p.schema.topic(p.prefix, invoices.table)


def alerts(p: Pipeline) -> list[tuple[Any, ...]]:
    return p.warehouse(
        "SELECT rule, booking_id, actor, actor_role, old_price::text, new_price::text, "
        "change_pct::text FROM audit.alerts ORDER BY commit_lsn, sequence, rule"
    )


def test_change_by_an_allowed_role_raises_nothing(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    booking = book(p)
    set_price(p, booking, "105.00", actor="alice", role="admin")
    p.capture()
    stats = p.alerts()
    assert stats.changes == 1  # the change was judged, and passed
    assert alerts(p) == []
    assert alert_ids_on_topic(p) == []


def test_change_with_an_approval_reference_raises_nothing(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    booking = book(p)
    send_invoice(p, booking)
    # A dispatcher, 50 % up, after the invoice: every default rule would fire but for the approval.
    set_price(p, booking, "150.00", approval_ref="APR-7")
    p.capture()
    stats = p.alerts()
    assert (stats.changes, stats.invoices) == (1, 1)
    assert alerts(p) == []


def test_unapproved_change_raises_exactly_one_alert_in_every_output(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    booking = book(p)
    set_price(p, booking, "105.00")
    p.flow()  # capture and the audit writer, for the link back to the audit entry

    run = p.cli("consume", "alerts", "--exit-when-idle")
    assert alerts(p) == [
        ("price-by-unauthorised-role", str(booking), "dana", "dispatcher", "100.00", "105.00",
         "5.00"),
    ]  # fmt: skip
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == 1
    document = lines[0]
    change = p.warehouse(
        "SELECT id, source, commit_lsn::text, sequence, txid, committed_at FROM audit.row_changes "
        "WHERE table_name = %s AND action = 'update'",
        (p.schema.names["bookings"],),
    )
    change_id, source, commit_lsn, sequence, txid, committed_at = change[0]
    assert document["alert_id"] == f"{source}:{commit_lsn}:{sequence}:price-by-unauthorised-role"
    assert document["severity"] == "high"
    # The booking by its own key, the price by its own column: both read through the map.
    assert (document["booking_id"], document["table"]) == (
        str(booking),
        str(p.schema.bookings_table),
    )
    price = p.schema.entity_map.booking.fields.price[0]
    assert [c["field"] for c in document["changes"]] == [price]
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

    on_topic = topic_records(p, p.alerts_topic)
    assert [(r.key, decode_alert(r.value or b"")) for r in on_topic] == [
        (str(booking).encode(), document)
    ]
    since = (committed_at - timedelta(minutes=1)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    listed = json.loads(p.cli("alerts", "list", "--since", since, "--format", "json").stdout)
    assert listed == [{**document, "audit_change": change_id}]
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert json.loads(p.cli("alerts", "list", "--since", future, "--format", "json").stdout) == []

    # A replay from offset 0 by another group, and a restart of the first, add nothing anywhere.
    p.alerts(group_id=p.alerts_group_id + "-replay")
    again = p.cli("consume", "alerts", "--exit-when-idle")
    assert again.stdout == ""
    assert len(alerts(p)) == 1
    assert alert_ids_on_topic(p) == [document["alert_id"]]


def test_change_after_the_invoice_was_sent_raises_one_alert(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    booking, other = book(p), book(p)
    set_price(p, booking, "101.00", actor="alice", role="admin")  # before: allowed
    send_invoice(p, other, sent=False)  # a draft is not sent
    set_price(p, other, "101.00", actor="alice", role="admin")
    send_invoice(p, booking)
    set_price(p, booking, "102.00", actor="alice", role="admin")  # after: alert
    p.capture()
    stats = p.alerts()
    assert (stats.changes, stats.invoices) == (3, 1)
    assert alerts(p) == [
        ("price-change-after-invoice-sent", str(booking), "alice", "admin", "101.00", "102.00",
         "0.99"),
    ]  # fmt: skip


def test_invoice_read_after_the_change_still_raises_the_alert_once(
    schema_pipeline: Pipeline,
) -> None:
    """Topics are read in no common order: hand the job the change first, then the invoice."""
    p = schema_pipeline
    booking = book(p)
    send_invoice(p, booking)
    set_price(p, booking, "101.00", actor="alice", role="admin")
    p.capture()
    bookings = topic_records(p, booking_topic(p))
    invoices = topic_records(p, invoices_topic(p))
    rules = default_rules(p.schema.entity_map)  # the default rules, on the schema's own names
    job = AlertsJob(p.alerts_settings(rules), rules, p.logs.append)
    try:
        first = job.record(decode_batch(bookings, rules))
        assert first == []  # no invoice known yet
        second = job.record(decode_batch(invoices, rules))
        assert [a.document["rule"] for a in second] == ["price-change-after-invoice-sent"]
        # The other order, and both at once, find the same alert already recorded.
        assert job.record(decode_batch(invoices + bookings, rules)) == []
    finally:
        job.close()
    assert [a[0] for a in alerts(p)] == ["price-change-after-invoice-sent"]


def test_alerts_a_dead_instance_produced_but_did_not_record_are_not_produced_again(
    schema_pipeline: Pipeline,
) -> None:
    """The crash window between Kafka's acknowledgment and recording the delivery."""
    p = schema_pipeline
    booking = book(p)
    for price in ("101.00", "102.00", "103.00"):
        set_price(p, booking, price)
    p.capture()
    bookings = topic_records(p, booking_topic(p))
    rules = default_rules(p.schema.entity_map)  # the default rules, on the schema's own names
    job = AlertsJob(p.alerts_settings(rules), rules, p.logs.append)
    try:
        assert job.store.hold_lock(instance_lock(job.instance))
        recorded = job.record(decode_batch(bookings, rules))
        assert len(recorded) == 3
        producer = Producer({"bootstrap.servers": p.stack.kafka_bootstrap})
        producer.produce(
            p.alerts_topic,
            key=str(booking).encode(),
            value=encode_alert(recorded[0].document),
        )
        assert producer.flush(30) == 0
    finally:
        job.close()  # dies: its instance lock goes with its connection

    stats = p.alerts()  # replays the changes, and takes over the dead instance's outbox
    assert (stats.alerts, stats.recovered) == (0, 2)
    assert sorted(alert_ids_on_topic(p)) == sorted(a.alert_id for a in recorded)
    delivered = p.warehouse(
        "SELECT alert, kafka_offset IS NOT NULL FROM audit.alert_deliveries "
        "WHERE channel = 'kafka' ORDER BY alert"
    )
    assert delivered == [(a.id, True) for a in recorded]


def test_alert_tables_are_append_only(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    set_price(p, book(p), "500.00", actor=None)
    p.capture()
    p.alerts()
    assert len(alerts(p)) == 2  # no role, and over 10 %
    for statement in (
        "UPDATE audit.alerts SET severity = 'low'",
        "DELETE FROM audit.alert_deliveries",
        "DELETE FROM audit.alert_outbox",
        "TRUNCATE audit.alert_context",
    ):
        with (
            psycopg.connect(p.warehouse_dsn) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute(statement)


def test_demo_ends_with_the_alerts_for_the_raw_price_edit(pipeline: Pipeline) -> None:
    """`demo run` plays the sample schema only: this one stays on it (both modes)."""
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
