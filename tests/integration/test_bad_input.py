"""Bad input at the source and lost connections mid-stream: one-line errors or retries, and
nothing lost (the bad-input table in the README points here)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql

from bookaudit.kafka.serde import to_kafka
from bookaudit.model import SourceInfo
from devstack import StackEnv
from tests.cdc.fixtures import change
from tests.integration.harness import Pipeline, wait_for
from tests.integration.schemas import Schema
from tests.integration.workloads import add_customer, customer_names

ODD = ("My Table", 'we"ird', "semi;colon.dot")


def test_quotes_spaces_and_mixed_case_get_valid_topic_names(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    # Beside the schema's own tables (`public`, or `ops` on the jobs schema).
    where = p.schema.entity_map.booking.table.schema
    p.migrate(
        *(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)")
            .format(sql.Identifier(where, name))
            .as_string()
            for name in ODD
        )
    )
    for name in ODD:
        quoted = name.replace('"', '""')
        p.cli("source", "install", "--table", f'{where}."{quoted}"')
    with p.source() as conn:
        for name in ODD:
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(where, name)),
                (name,),
            )
    p.flow()
    stored = p.warehouse(
        "SELECT table_name, after ->> 'v' FROM audit.row_changes WHERE table_name <> %s "
        "ORDER BY commit_lsn, sequence",
        (p.schema.names["customers"],),
    )
    assert stored == [(name, name) for name in ODD]
    topics = set(AdminClient({"bootstrap.servers": p.stack.kafka_bootstrap}).list_topics(
        timeout=10
    ).topics)  # fmt: skip
    expected = {f"{p.prefix}.{where}.My_Table", f"{p.prefix}.{where}.we_ird",
                f"{p.prefix}.{where}.semi_colon_dot"}  # fmt: skip
    assert expected <= topics


def _kill_backends(p: Pipeline, application: str, dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (application,),
        ).fetchone()
    return int(row[0]) if row else 0


def _insert(p: Pipeline, first: int, count: int) -> None:
    with p.source() as conn:
        for n in range(first, first + count):
            add_customer(p, conn, f"c{n}")
            conn.commit()


def _customers(p: Pipeline) -> list[tuple[str, int]]:
    return customer_names(p)


@pytest.fixture
def logical(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    """The warehouse side does not depend on the capture mode: logical mode, on each schema."""
    p = Pipeline(stack, mode="logical", schema=schema).create()
    yield p
    p.drop()


@pytest.mark.slow
def test_source_lost_mid_stream_is_retried_and_nothing_is_lost(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    log = p.spawn_log("capture")
    with p.running("capture") as capture:
        _insert(p, 0, 10)
        wait_for("the capture to stream", lambda: "capture:" in log.read_text()
                 or "relay:" in log.read_text())  # fmt: skip
        assert _kill_backends(p, "bookaudit-capture", p.source_dsn) >= 1
        wait_for("a logged retry", lambda: "(retry 1 in" in log.read_text())
        _insert(p, 10, 10)
        assert capture.poll() is None, "the capture must retry, not exit"
    p.flow()
    assert _customers(p) == sorted((f"c{n}", 1) for n in range(20))


@pytest.mark.slow
def test_warehouse_lost_mid_stream_is_retried_and_nothing_is_lost(logical: Pipeline) -> None:
    p = logical
    log = p.spawn_log("consume")
    _insert(p, 0, 10)
    p.capture()
    with p.running("consume", "audit") as writer:
        wait_for("the first batch", lambda: len(_customers(p)) == 10)
        assert _kill_backends(p, "bookaudit-audit-writer", p.warehouse_dsn) >= 1
        _insert(p, 10, 10)
        p.capture()
        wait_for("a logged retry", lambda: "(retry 1 in" in log.read_text())
        wait_for("every change", lambda: len(_customers(p)) == 20)
        assert writer.poll() is None, "the writer must retry, not exit"
    assert _customers(p) == sorted((f"c{n}", 1) for n in range(20))


def test_a_value_the_warehouse_refuses_is_dead_lettered_and_the_batch_goes_on(
    logical: Pipeline,
) -> None:
    """A well-formed envelope holding a NUL character (no PostgreSQL text can) used to stop the
    writer with a raw DataError on every restart."""
    p = logical
    nul = replace(change(), after={**(change().after or {}), "memo": "a\x00b"})
    bad = to_kafka(nul, SourceInfo("bookings", "db"), p.prefix, now_ms=1)
    producer = Producer({"bootstrap.servers": p.stack.kafka_bootstrap})
    producer.produce(bad.topic, key=bad.key, value=bad.value, headers=list(bad.headers))
    producer.flush(10)
    _insert(p, 0, 3)
    p.flow()
    assert _customers(p) == [("c0", 1), ("c1", 1), ("c2", 1)]
    dead = p.warehouse("SELECT kafka_topic, value, error FROM audit.dead_letters")
    assert len(dead) == 1
    assert dead[0][0] == bad.topic and bytes(dead[0][1]) == bad.value
    assert "the warehouse refused a value" in dead[0][2]
