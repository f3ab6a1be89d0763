"""The actor's label and identity are defined once: the warehouse's SQL functions agree with
bookaudit.model on every shape of context."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bookaudit.model import actor_identity, actor_label
from bookaudit.warehouse.schema import init_warehouse
from devstack import StackEnv

VALUES = (None, "", "alice", "o'brien via x")


@pytest.fixture
def warehouse_dsn(stack: StackEnv) -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:10] + "_wh"
    with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = make_conninfo(stack.admin_dsn, dbname=name)
        init_warehouse(dsn)
        yield dsn
    finally:
        with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
