"""What the application wrote reaches a terminal escaped, and JSON exactly as written."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devstack import StackEnv
from tests.integration.harness import Pipeline

# A newline that would print a fake history line, then ANSI: clear screen, red, window title.
ACTOR = "mallory\n2026-11-26 06:17:43+00:00  alice  admin  update\x1b[2J\x1b[31m"
ROLE = "\x1b]0;pwned\x07dispatcher"
NOTE = "line one\r\nline two \x1b[0m\u202e"


@pytest.fixture
def pipeline(stack: StackEnv) -> Iterator[Pipeline]:
    """Rendering does not depend on the capture mode: one mode is enough here."""
    p = Pipeline(stack).create()
    yield p
    p.drop()


def test_control_characters_are_escaped_in_tables_and_exact_in_json(pipeline: Pipeline) -> None:
    [booking] = pipeline.seed()
    with pipeline.source() as conn:
        conn.execute("SELECT bookaudit.set_actor(%s, role => %s)", (ACTOR, ROLE))
        conn.execute("UPDATE bookings SET price = 250.00 WHERE id = %s", (booking,))
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES (%s, 'x', %s)", (booking, NOTE)
        )
    pipeline.flow()
    pipeline.alerts(out=[])

    entries = json.loads(
        pipeline.cli("history", "booking", str(booking), "--format", "json").stdout
    )
    assert {e["actor"] for e in entries if e["actor"] != "seed"} == {ACTOR}
    assert {e["actor_role"] for e in entries if e["actor"] == ACTOR} == {ROLE}
    assert NOTE in {e["new"] for e in entries}

    table = pipeline.cli("history", "booking", str(booking)).stdout
    for raw in ("\x1b", "\x07", "\r", "\u202e"):
        assert raw not in table
    # Header, rule, one line per entry: no entry added a line of its own.
    assert len(table.rstrip("\n").split("\n")) == 2 + len(entries)
    assert "mallory\\n2026-11-26" in table
    assert "\\x1b]0;pwned\\x07dispatcher" in table

    alerts = json.loads(
        pipeline.cli("alerts", "list", "--booking", str(booking), "--format", "json").stdout
    )
    assert alerts and {a["actor"] for a in alerts} == {ACTOR}
    listed = pipeline.cli("alerts", "list", "--booking", str(booking)).stdout
    assert "\x1b" not in listed and "\x07" not in listed
    assert "mallory\\n2026-11-26" in listed
