"""What a growing warehouse costs beside the writer: ANALYZE skips the row images."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from bookaudit.warehouse.schema import init_warehouse
from devstack import StackEnv
from tests.integration.harness import scratch_database


@pytest.fixture
def warehouse(stack: StackEnv) -> Iterator[str]:
    with scratch_database(stack.admin_dsn) as dsn:
        yield dsn


def test_analyze_samples_the_keys_but_not_the_row_images(warehouse: str) -> None:
    # Twice: rerunning init, as an upgrade does, keeps the setting. (A warehouse analyzed
    # before the upgrade keeps its old statistics of the images; ANALYZE no longer refreshes
    # them, and no plan reads them.)
    init_warehouse(warehouse, {})
    init_warehouse(warehouse, {})
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit.row_changes (source, commit_lsn, sequence, lsn, txid, "
            "committed_at, schema_name, table_name, action, row_key, before, after, "
            "actor_origin, kafka_topic, kafka_partition, kafka_offset) "
            "SELECT 'src', '1/0'::pg_lsn + g, 0, '1/0'::pg_lsn + g, 1, now(), 'public', "
            "'visits', 'update', jsonb_build_object('id', g), jsonb_build_object('n', g), "
            "jsonb_build_object('n', g + 1), 'application', 't', 0, g "
            "FROM generate_series(1, 2000) g"
        )
        conn.execute("ANALYZE audit.row_changes")
        sampled = {
            str(r[0])
            for r in conn.execute(
                "SELECT attname FROM pg_stats WHERE schemaname = 'audit' "
                "AND tablename = 'row_changes'"
            )
        }
    assert {"row_key", "committed_at", "actor", "source"} <= sampled
    assert not {"before", "after"} & sampled
