"""docker-compose.yml's steps, run as its commands on the real stack: the init steps on fresh
databases, capture and the audit writer running, then the sample day prints the booking's
history. Only Docker itself is left out (there is no engine here)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from devstack import StackEnv
from tests.integration.harness import Pipeline

SERVICES: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
)["services"]


@pytest.fixture
def fresh(stack: StackEnv) -> Iterator[Pipeline]:
    """Empty source and warehouse databases: everything else is the compose steps' job."""
    p = Pipeline(stack)
    with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{p.name}_src"')
        admin.execute(f'CREATE DATABASE "{p.name}_wh"')
    yield p
    p.drop()


def test_compose_steps_end_with_the_demo_bookings_history(fresh: Pipeline) -> None:
    p = fresh
    for step in ("sample-schema", "warehouse-init", "source-install"):
        p.cli(*SERVICES[step]["command"])
    with ExitStack() as services:
        for service in ("capture", "audit-writer"):
            services.enter_context(p.running(*SERVICES[service]["command"], stop_timeout=60))
        day = p.cli(*SERVICES["demo-day"]["command"])
    match = re.search(r"Timeline of booking (\d+)", day.stdout)
    assert match, day.stdout + day.stderr
    booking = match.group(1)
    # Who changed what: the day's actors and the raw psql edit, in the printed history.
    for who in ("dana", "alice", "finn", "db role via psql"):
        assert who in day.stdout, who
    stored = p.warehouse(
        "SELECT count(*) FROM audit.row_changes WHERE table_name = 'bookings' "
        "AND row_key ->> 'id' = %s",
        (booking,),
    )
    assert stored[0][0] >= 3
