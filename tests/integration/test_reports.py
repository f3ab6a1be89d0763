"""The office reports over the demo's day: booking, customer, daily log and one user's activity."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bookaudit.demo.day import play_day
from tests.integration.harness import Pipeline


def _json(p: Pipeline, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(p.cli("history", *args, "--format", "json").stdout)
    return result


def test_reports_over_the_demo_day(pipeline: Pipeline) -> None:
    booking = play_day(pipeline.app_dsn, lambda _m: None, psql_dsn=pipeline.source_dsn)
    pipeline.flow()

    history = _json(pipeline, "booking", str(booking))
    prices = [(e["actor"], e["old"], e["new"]) for e in history if e["field"] == "price"]
    assert prices == [
        ("dana", None, "149.00"),
        ("alice", "149.00", "189.50"),
        ("postgres (db role via psql)", "189.50", "169.50"),
    ]
    assert {e["table"] for e in history} == {
        "bookings", "assignments", "notes", "invoices", "payments",
    }  # fmt: skip

    customer_id = next(e["new"] for e in history if e["field"] == "customer_id")
    customer = _json(pipeline, "customer", customer_id)
    assert {e["table"] for e in customer} >= {"customers", "bookings", "invoices"}
    assert {e["booking"] for e in customer if e["table"] != "customers"} == {str(booking)}

    today = datetime.now(UTC).date().isoformat()
    log = _json(pipeline, "log", "--since", today)
    assert [(e["event"], e["actor"]) for e in log] == [
        ("created", "dana"),
        ("modified", "dana"),
        ("modified", "alice"),
        ("modified", "finn"),
        ("modified", "finn"),
        ("modified", "postgres (db role via psql)"),
    ]
    assert log[2]["fields"] == "price, updated_at" and log[2]["approval_ref"] == "APR-1042"
    assert _json(pipeline, "log", "--since", "2000-01-01", "--until", "2000-01-02") == []

    finn = _json(pipeline, "actor", "finn")
    assert {(e["table"], e["action"]) for e in finn} == {
        ("bookings", "update"), ("notes", "insert"),
    }  # fmt: skip
    assert all(e["actor_role"] == "fieldworker" for e in finn)
    raw = _json(pipeline, "actor", "postgres")
    assert [(e["field"], e["old"], e["new"]) for e in raw] == [("price", "189.50", "169.50")]
