"""The actor's label and identity are defined once: the warehouse's SQL functions agree with
bookaudit.model on every shape of context."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from bookaudit.model import actor_identity, actor_label
from bookaudit.warehouse.schema import init_warehouse
from devstack import StackEnv
from tests.integration.harness import scratch_database

VALUES = (None, "", "alice", "o'brien via x")


@pytest.fixture
def warehouse_dsn(stack: StackEnv) -> Iterator[str]:
    with scratch_database(stack.admin_dsn) as dsn:
        init_warehouse(dsn)
        yield dsn


def test_sql_label_and_identity_equal_the_python_ones(warehouse_dsn: str) -> None:
    cases = list(itertools.product(VALUES, repeat=3))
    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute(
            "SELECT audit.actor_label(a, u, p), audit.actor_identity(a, u) "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS c(a, u, p, n) "
            "ORDER BY n",
            ([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]),
        ).fetchall()
    assert len(rows) == len(cases)
    for (actor, db_user, program), (label, identity) in zip(cases, rows, strict=True):
        assert label == actor_label(actor, db_user, program), (actor, db_user, program)
        assert identity == actor_identity(actor, db_user), (actor, db_user)
