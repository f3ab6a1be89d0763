"""What the application wrote reaches a terminal escaped, and JSON exactly as written."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from devstack import StackEnv
from tests.integration.harness import Pipeline
from tests.integration.schemas import Schema
from tests.integration.workloads import book, schema_sql

# A newline that would print a fake history line, then ANSI: clear screen, red, window title.
ACTOR = "mallory\n2026-11-26 06:17:43+00:00  alice  admin  update\x1b[2J\x1b[31m"
ROLE = "\x1b]0;pwned\x07dispatcher"
NOTE = "line one\r\nline two \x1b[0m\u202e"


def _exact_stdout(p: Pipeline, *args: str) -> str:
    """stdout byte for byte (a text-mode pipe would turn the value's \\r\\n into \\n)."""
    result = subprocess.run(
        [sys.executable, "-m", "bookaudit", *args], env=p.env(), capture_output=True, timeout=300
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode("utf-8")


@pytest.fixture
def pipeline(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    """Rendering does not depend on the capture mode: one mode is enough here, on each schema."""
    p = Pipeline(stack, schema=schema).create()
    yield p
    p.drop()


def test_control_characters_are_escaped_in_tables_and_exact_in_json(pipeline: Pipeline) -> None:
    [booking] = book(pipeline, actor="seed", role=None)
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor(%s, role => %s)", (ACTOR, ROLE))
        conn.execute(
            schema_sql(pipeline.schema, "UPDATE {bookings} SET {price} = 250.00 WHERE {key} = %s"),
            (booking,),
        )
        conn.execute(pipeline.schema.writes.note, {"booking": booking, "body": NOTE})
    pipeline.flow()
    pipeline.alerts(out=[])

    entries = json.loads(pipeline.cli("history", "booking", booking, "--format", "json").stdout)
    assert {e["actor"] for e in entries if e["actor"] != "seed"} == {ACTOR}
    assert {e["actor_role"] for e in entries if e["actor"] == ACTOR} == {ROLE}
    assert NOTE in {e["new"] for e in entries}

    exported = _exact_stdout(pipeline, "history", "booking", booking, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported, newline="")))
    assert ACTOR in {r["actor"] for r in rows} and NOTE in {r["new"] for r in rows}

    table = pipeline.cli("history", "booking", booking).stdout
    for raw in ("\x1b", "\x07", "\r", "\u202e"):
        assert raw not in table
    # Header and rule, then one line per event, each starting with its time: no value added a
    # line of its own.
    lines = table.rstrip("\n").split("\n")
    assert len(lines) >= 4
    assert all(re.match(r"\d{4}-\d{2}-\d{2} ", line) for line in lines[2:]), table
    assert "mallory\\n2026-11-26" in table
    assert "line one\\r\\nline two \\x1b[0m\\u202e" in table
    by_role = pipeline.cli("history", "actor", ACTOR).stdout
    assert "\x1b" not in by_role and "\x07" not in by_role

    alerts = json.loads(
        pipeline.cli("alerts", "list", "--booking", booking, "--format", "json").stdout
    )
    assert alerts and {a["actor"] for a in alerts} == {ACTOR}
    listed = pipeline.cli("alerts", "list", "--booking", booking).stdout
    assert "\x1b" not in listed and "\x07" not in listed
    assert "mallory\\n2026-11-26" in listed
