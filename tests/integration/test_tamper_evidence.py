"""The hash chain: intact after normal writes, and every kind of tampering is reported, on
the sample schema and on one that shares none of its names."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from tests.integration.harness import Pipeline

# Three customers, then each one's e-mail address, as each schema spells them.
_CUSTOMERS = {
    "sample": (
        "INSERT INTO customers (name) VALUES ('a'), ('b'), ('c')",
        "UPDATE customers SET email = name || '@example.com'",
    ),
    "jobs": (
        "INSERT INTO ops.clients (client_no, full_name) VALUES ('CL-a', 'a'), ('CL-b', 'b'), "
        "('CL-c', 'c')",
        "UPDATE ops.clients SET email = full_name || '@example.com'",
    ),
}


def _write_some(p: Pipeline) -> None:
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        for statement in _CUSTOMERS[p.schema.name]:
            conn.execute(statement)
    p.flow()


def _as_owner_bypassing_triggers(p: Pipeline, *statements: str) -> None:
    """What a rogue owner can do: replica mode skips the append-only triggers (and FKs)."""
    with psycopg.connect(p.warehouse_dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


def test_normal_writes_leave_an_intact_chain(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    _write_some(pipeline)
    pipeline.consume(group_id=pipeline.group_id + "-replay")  # a replay must not break it
    rows, alerts = pipeline.cli("warehouse", "verify").stdout.splitlines()
    assert rows.startswith("intact: 6 audit rows chained, head ")
    assert len(rows.split("head ")[1]) == 64
    assert alerts == "intact: 0 alerts chained, head -"


def test_modified_deleted_and_inserted_rows_are_reported(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    table = pipeline.schema.entity_map.booking.table
    _write_some(pipeline)
    chain = dict(pipeline.warehouse("SELECT change_id, position FROM audit.chain"))
    updates = [r[0] for r in pipeline.warehouse(
        "SELECT id FROM audit.row_changes WHERE action = 'update' ORDER BY id")]  # fmt: skip
    inserts = [r[0] for r in pipeline.warehouse(
        "SELECT id FROM audit.row_changes WHERE action = 'insert' ORDER BY id")]  # fmt: skip
    field_edited, actor_edited, deleted = updates[0], inserts[0], updates[1]
    _as_owner_bypassing_triggers(
        pipeline,
        f"UPDATE audit.field_changes SET new_value = 'mallory@example.com' "
        f"WHERE change_id = {field_edited} AND field = 'email'",
        f"UPDATE audit.row_changes SET actor = 'bob' WHERE id = {actor_edited}",
        f"DELETE FROM audit.field_changes WHERE change_id = {deleted}",
        f"DELETE FROM audit.row_changes WHERE id = {deleted}",
        "INSERT INTO audit.row_changes (source, commit_lsn, sequence, lsn, txid, committed_at, "
        "schema_name, table_name, action, actor_origin, kafka_topic, kafka_partition, "
        "kafka_offset) VALUES ('bookings', '0/1', 0, '0/1', 1, now(), "
        f"'{table.schema}', '{table.name}', 'delete', 'application', 'x', 0, 0)",
        "INSERT INTO audit.field_changes (change_id, field, position, new_value) "
        "VALUES (-7, 'price', 1, '0.00')",
    )
    result = pipeline.cli("warehouse", "verify", check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    expected = sorted(
        [
            (chain[field_edited], f"audit row {field_edited} (chain position {chain[field_edited]}) was modified"),
            (chain[actor_edited], f"audit row {actor_edited} (chain position {chain[actor_edited]}) was modified"),
            (chain[deleted], f"audit row {deleted} (chain position {chain[deleted]}) was deleted"),
        ]
    )  # fmt: skip
    assert lines[:3] == [f"TAMPERED: {text}" for _, text in expected]
    assert len(lines) == 5
    assert lines[3].startswith("TAMPERED: audit row ")
    assert lines[3].endswith("is not in the chain: it was written around the audit writer")
    assert lines[4] == (
        "TAMPERED: field rows of change -7 belong to no chained audit row: "
        "they were written around the audit writer"
    )


def _price_change_after_invoice(p: Pipeline) -> None:
    w = p.schema.writes
    [booking] = p.seed(price="100.00")
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('olga', role => 'billing')")
        sent = datetime.now(UTC)
        conn.execute(
            w.invoice, {"booking": booking, "number": "INV-1", "amount": "100.00", "sent": sent}
        )
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin', approval_ref => 'A-1')")
        conn.execute(w.price, {"booking": booking, "price": "101.00"})
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('dan', role => 'dispatcher')")
        conn.execute(w.price, {"booking": booking, "price": "150.00"})
    p.flow()
    p.alerts()


def test_a_deleted_or_edited_alert_fails_verify(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    _price_change_after_invoice(pipeline)
    _, alerts = pipeline.cli("warehouse", "verify").stdout.splitlines()
    count = int(pipeline.warehouse("SELECT count(*) FROM audit.alerts")[0][0])
    assert count >= 3 and alerts.startswith(f"intact: {count} alerts chained, head ")
    chained = dict(pipeline.warehouse("SELECT a.rule, c.position FROM audit.alerts a "
                                      "JOIN audit.alert_chain c ON c.alert = a.id "
                                      "WHERE a.booking_id IS NOT NULL AND a.new_price = 150.00"))  # fmt: skip
    invoice = pipeline.warehouse(
        "SELECT id FROM audit.alerts WHERE rule = 'price-change-after-invoice-sent' "
        "AND new_price = 150.00"
    )[0][0]
    role = pipeline.warehouse(
        "SELECT id FROM audit.alerts WHERE rule = 'price-by-unauthorised-role' "
        "AND new_price = 150.00"
    )[0][0]
    _as_owner_bypassing_triggers(
        pipeline,
        f"DELETE FROM audit.alert_outbox WHERE alert = {invoice}",
        f"DELETE FROM audit.alert_deliveries WHERE alert = {invoice}",
        f"DELETE FROM audit.alerts WHERE id = {invoice}",
        f"UPDATE audit.alerts SET severity = 'low', document = document || "
        f'\'{{"severity": "low"}}\' WHERE id = {role}',
        "INSERT INTO audit.alerts (alert_id, rule, kind, severity, message, source, commit_lsn, "
        "sequence, txid, committed_at, table_name, actor, document) VALUES ('x:0/1:0:fake', "
        "'fake', 'threshold', 'low', 'nothing to see', 'bookings', '0/1', 0, 1, now(), "
        f"'{pipeline.schema.entity_map.booking.table}', 'alice', '{{}}')",
    )
    result = pipeline.cli("warehouse", "verify", check=False)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    at_invoice = chained["price-change-after-invoice-sent"]
    at_role = chained["price-by-unauthorised-role"]
    assert sorted(lines[:2]) == sorted([
        f"TAMPERED: alert {invoice} (alert chain position {at_invoice}) was deleted",
        f"TAMPERED: alert {role} (alert chain position {at_role}) was modified",
    ])  # fmt: skip
    assert len(lines) == 3
    assert lines[2].startswith("TAMPERED: alert ")
    assert lines[2].endswith("is not in the alert chain: it was written around the alerts job")
