"""Checks a running `bookaudit stack` (from $BOOKAUDIT_STACK_DIR or ./.stack) is usable."""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from devstack import StackEnv, delete_topics, read_env, status
from devstack.cli import stack
from tests.integration.harness import wait_for


def _state_dir() -> Path:
    return Path(os.environ.get("BOOKAUDIT_STACK_DIR", ".stack"))


@pytest.fixture(scope="module")
def env(stack: StackEnv) -> StackEnv:
    """The stack the session fixture reuses or starts must be the one the state dir describes."""
    found = read_env(_state_dir())
    if found is None:
        pytest.fail(f"no stack running in {_state_dir()}: run `python -m devstack up` first")
    return found


def _parse_exports(lines: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, line
        name, _, value = words[1].partition("=")
        parsed[name] = value
    return parsed


def test_export_lines_quote_for_the_shell() -> None:
    odd = StackEnv(
        source_dsn="postgresql://u:p w'$x@h:1/bookings",
        warehouse_dsn="postgresql://u@h:1/audit",
        kafka_bootstrap="h:2",
        admin_dsn="postgresql://u@h:1/postgres",
    )
    assert _parse_exports(odd.export_lines()) == {
        "BOOKAUDIT_SOURCE_DSN": odd.source_dsn,
        "BOOKAUDIT_WAREHOUSE_DSN": odd.warehouse_dsn,
        "BOOKAUDIT_KAFKA_BOOTSTRAP": odd.kafka_bootstrap,
        "BOOKAUDIT_ADMIN_DSN": odd.admin_dsn,
    }


@pytest.mark.integration
def test_status_reports_both_services_running(env: StackEnv) -> None:
    report = status(_state_dir())
    assert report["postgres"] == f"running on {env.admin_dsn.split('@')[1].split('/')[0]}"
    assert report["kafka"] == f"running on {env.kafka_bootstrap}"


@pytest.mark.integration
def test_env_command_prints_parsable_exports(env: StackEnv) -> None:
    result = CliRunner().invoke(stack, ["env", "--dir", str(_state_dir())])
    assert result.exit_code == 0, result.output
    assert _parse_exports(result.output.splitlines()) == {
        "BOOKAUDIT_SOURCE_DSN": env.source_dsn,
        "BOOKAUDIT_WAREHOUSE_DSN": env.warehouse_dsn,
        "BOOKAUDIT_KAFKA_BOOTSTRAP": env.kafka_bootstrap,
        "BOOKAUDIT_ADMIN_DSN": env.admin_dsn,
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    ("field", "dbname"), [("source_dsn", "bookings"), ("warehouse_dsn", "audit")]
)
def test_postgres_databases_are_logical(env: StackEnv, field: str, dbname: str) -> None:
    with psycopg.connect(getattr(env, field), connect_timeout=5) as conn:
        row = conn.execute("SELECT current_database(), current_setting('wal_level')").fetchone()
    assert row == (dbname, "logical")


@pytest.mark.integration
def test_postgres_allows_replication_connections(env: StackEnv) -> None:
    with psycopg.connect(env.admin_dsn, connect_timeout=5) as conn:
        slots = conn.execute("SHOW max_replication_slots").fetchone()
        hba = conn.execute(
            "SELECT count(*) FROM pg_hba_file_rules "
            "WHERE 'replication' = ANY(database) AND address = '127.0.0.1'"
        ).fetchone()
    assert slots == ("20",)
    assert hba == (1,)


@pytest.mark.integration
def test_kafka_lists_topics(env: StackEnv) -> None:
    metadata = AdminClient({"bootstrap.servers": env.kafka_bootstrap}).list_topics(timeout=10)
    assert len(metadata.brokers) == 1


@pytest.mark.integration
def test_kafka_round_trips_a_message(env: StackEnv) -> None:
    run = f"stack-smoke-{uuid.uuid4().hex[:12]}"
    topic = f"{run}.ping"
    producer = Producer({"bootstrap.servers": env.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"hello", partition=0)
    assert producer.flush(30) == 0
    # assign() instead of subscribe(): no group join, so the check takes milliseconds.
    consumer = Consumer({"bootstrap.servers": env.kafka_bootstrap, "group.id": topic})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        message = consumer.poll(20)
    finally:
        consumer.close()
        delete_topics(env.kafka_bootstrap, run)
    assert message is not None and message.error() is None
    assert (message.key(), message.value()) == (b"k", b"hello")


@pytest.mark.integration
def test_delete_topics_takes_the_runs_topics_and_no_other(env: StackEnv) -> None:
    run = f"stack-run-{uuid.uuid4().hex[:12]}"
    mine = [f"{run}.public.bookings", f"{run}.ops.jobs", f"{run}.alerts"]
    # Another run whose name starts with this one's, and a topic named as the run itself.
    others = [f"{run}0.public.bookings", run]
    admin = AdminClient({"bootstrap.servers": env.kafka_bootstrap})
    made = admin.create_topics([NewTopic(t, num_partitions=1) for t in mine + others])
    for future in made.values():
        future.result(timeout=60)
    try:
        assert delete_topics(env.kafka_bootstrap, run) == sorted(mine)

        def listed() -> set[str]:
            return set(admin.list_topics(timeout=30).topics)

        wait_for("the deleted topics to leave the metadata", lambda: not listed() & set(mine))
        assert set(others) <= listed()
        assert delete_topics(env.kafka_bootstrap, run) == []  # nothing left: nothing to do
    finally:
        for future in admin.delete_topics(others, operation_timeout=60).values():
            future.result(timeout=120)
