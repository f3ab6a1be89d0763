"""The hash chain: intact after normal writes, and every kind of tampering is reported."""

from __future__ import annotations

import psycopg

from tests.integration.harness import Pipeline


def _write_some(p: Pipeline) -> None:
    with p.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('alice', role => 'admin')")
        conn.execute("INSERT INTO customers (name) VALUES ('a'), ('b'), ('c')")
        conn.execute("UPDATE customers SET email = name || '@example.com'")
    p.flow()


def _as_owner_bypassing_triggers(p: Pipeline, *statements: str) -> None:
    """What a rogue owner can do: replica mode skips the append-only triggers (and FKs)."""
    with psycopg.connect(p.warehouse_dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


def test_normal_writes_leave_an_intact_chain(pipeline: Pipeline) -> None:
    _write_some(pipeline)
    pipeline.consume(group_id=pipeline.group_id + "-replay")  # a replay must not break it
    out = pipeline.cli("warehouse", "verify").stdout
    assert out.startswith("intact: 6 audit rows chained, head ")
    assert len(out.split("head ")[1].strip()) == 64


def test_modified_deleted_and_inserted_rows_are_reported(pipeline: Pipeline) -> None:
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
        "kafka_offset) VALUES ('bookings', '0/1', 0, '0/1', 1, now(), 'public', 'bookings', "
        "'delete', 'application', 'x', 0, 0)",
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
    assert len(lines) == 4
    assert lines[3].startswith("TAMPERED: audit row ")
    assert lines[3].endswith("is not in the chain: it was written around the audit writer")
