"""Session fixtures: the real PostgreSQL + Kafka stack, reused from BOOKAUDIT_* env when set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import StackEnv

ROOT = Path(__file__).resolve().parent.parent


def _env_stack() -> StackEnv | None:
    names = (
        "BOOKAUDIT_SOURCE_DSN",
        "BOOKAUDIT_WAREHOUSE_DSN",
        "BOOKAUDIT_KAFKA_BOOTSTRAP",
        "BOOKAUDIT_ADMIN_DSN",
    )
    values = [os.environ.get(n) for n in names]
    if not all(values):
        return None
    source, warehouse, bootstrap, admin = (str(v) for v in values)
    return StackEnv(source, warehouse, bootstrap, admin)


@pytest.fixture(scope="session")
def stack() -> StackEnv:
    """Like confluent-kafka's cluster fixture: reuse what the env names, else start our own.

    There is no skip path: a stack that cannot start fails the run, in CI and locally alike.
    """
    found = _env_stack()
    if found is not None:
        return found
    from devstack import up

    state_dir = Path(os.environ.get("BOOKAUDIT_STACK_DIR", ROOT / ".stack"))
    return up(state_dir, progress=lambda _m: None)
