"""Several sources, never mixed: two databases with identical table names and keys feed one
warehouse through the same topics, and each history shows only its own rows (two sample
databases, or two jobs databases: text keys, tables outside `public`, a map of their own)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from devstack import StackEnv
from tests.integration.harness import Pipeline
from tests.integration.schemas import Schema
from tests.integration.workloads import schema_sql


@pytest.fixture(params=["logical", "trigger"])
def two_sources(
    stack: StackEnv, schema: Schema, request: pytest.FixtureRequest
) -> Iterator[tuple[Pipeline, Pipeline]]:
    north = Pipeline(stack, mode=request.param, schema=schema, source_name="north").create()
    south = Pipeline(
        stack, mode=request.param, schema=schema, source_name="south", shared_with=north
    )
    try:
        south.create()
        yield north, south
    finally:
        south.drop()
        north.drop()


def _json(p: Pipeline, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(p.cli(*args, "--format", "json").stdout)
    return result


def test_each_source_shows_only_its_own_rows(two_sources: tuple[Pipeline, Pipeline]) -> None:
    north, south = two_sources
    booking = north.play_day()
    assert south.play_day() == booking  # same table, same key
    with south.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('sam', role => 'dispatcher')")
        conn.execute(
            schema_sql(south.schema, "UPDATE {bookings} SET {price} = 999.00 WHERE {key} = %s"),
            (booking,),
        )
    north.capture()
    south.capture()
    north.consume()  # one writer, one group: both sources share the topics
    assert north.warehouse("SELECT s FROM audit.sources() s") == [("north",), ("south",)]

    mixed = north.cli("history", "booking", booking, check=False)
    assert mixed.returncode == 2
    assert mixed.stderr.strip().splitlines() == [
        "bookaudit: error: 2 sources feed this warehouse: pass --source with one of north, south"
    ]
    unknown = north.cli("history", "log", "--source", "west", check=False)
    assert "--source 'west' has no audit entries here; sources: north, south" in unknown.stderr

    logs: dict[str, list[tuple[str, str]]] = {}
    for p, own in ((north, "north"), (south, "south")):
        history = _json(p, "history", "booking", booking, "--source", own)
        stored = p.warehouse(
            "SELECT count(*) FROM audit.booking_history WHERE source = %s AND booking_id = %s",
            (own, booking),
        )
        assert len(history) == stored[0][0] > 0
        prices = [e["new"] for e in history if e["field"] == p.schema.names["price"]]
        assert prices == (["149.00", "189.50", "169.50"] + (["999.00"] if own == "south" else []))
        ids = p.warehouse(
            "SELECT DISTINCT source FROM audit.booking_history WHERE booking_id = %s", (booking,)
        )
        assert sorted(ids) == [("north",), ("south",)]  # both are there, and kept apart

        customer_ref = p.schema.names["customer_id"]
        customer_id = next(e["new"] for e in history if e["field"] == customer_ref)
        customer = _json(p, "history", "customer", customer_id, "--source", own)
        assert (
            len(customer)
            == p.warehouse(
                "SELECT count(*) FROM audit.customer_history WHERE source = %s AND customer_id = %s",
                (own, customer_id),
            )[0][0]
        )
        log = _json(
            p, "history", "log", "--source", own, "--since", "2000-01-01", "--until", "2999-01-01"
        )
        logs[own] = [(e["actor"], e["label"]) for e in log]
        sam = _json(p, "history", "actor", "sam", "--source", own)
        assert len(sam) == (1 if own == "south" else 0)
    # The same day in both, plus south's own edit, in south's log only.
    assert len(logs["north"]) > 5
    assert logs["south"] == [*logs["north"], ("sam", "Price changed")]

    # One alert store, kept apart the same way: the 999.00 edit alerts only for south.
    north.alerts()
    alerts = {
        own: [(a["rule"], a["new_price"]) for a in _json(north, "alerts", "list", "--source", own)]
        for own in ("north", "south")
    }
    assert ("price-by-unauthorised-role", "999.00") in alerts["south"]
    assert all(price != "999.00" for _rule, price in alerts["north"])
