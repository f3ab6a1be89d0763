"""The office reports over the demo's day: booking, customer, daily log and one user's activity,
on the sample schema and on one with none of its names (read through its entity map)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from tests.integration.harness import Pipeline

LOGS = {
    "sample": [
        ("created", "dana", "Booking created"),
        ("modified", "dana", "Scheduled, status changed"),
        ("modified", "dana", "Assigned to finn"),
        ("modified", "alice", "Price changed"),
        ("modified", "finn", "Status changed"),
        ("modified", "finn", "Note added"),
        ("modified", "finn", "Status changed"),
        ("modified", "olga", "Invoice created, invoice sent"),
        ("modified", "olga", "Payment recorded"),
        ("modified", "olga", "Invoice status changed"),
        ("modified", "postgres (db role via psql)", "Price changed"),
    ],
    # The same day on the jobs schema: the technician is a column of the job, and the payment
    # reaches the job only through its invoice.
    "jobs": [
        ("created", "dana", "Booking created"),
        ("modified", "dana", "Scheduled, status changed, assigned to finn"),
        ("modified", "alice", "Price changed"),
        ("modified", "finn", "Status changed"),
        ("modified", "finn", "Note added"),
        ("modified", "finn", "Status changed"),
        ("modified", "olga", "Invoice created, invoice sent"),
        ("modified", "olga", "Payment recorded"),
        ("modified", "postgres (db role via psql)", "Price changed"),
    ],
}


def _json(p: Pipeline, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(p.cli("history", *args, "--format", "json").stdout)
    return result


def test_reports_over_the_demo_day(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    n = p.schema.names
    booking = p.play_day()
    p.flow()

    history = _json(p, "booking", booking)
    prices = [(e["actor"], e["old"], e["new"]) for e in history if e["field"] == n["price"]]
    assert prices == [
        ("dana", None, "149.00"),
        ("alice", "149.00", "189.50"),
        ("postgres (db role via psql)", "189.50", "169.50"),
    ]
    related = {e.table.name for e in p.schema.entity_map.entities if e.kind != "customer"}
    assert {e["table"] for e in history} == related
    # Payments are on the booking's history whether they name it or reach it through an invoice.
    assert {n["payments"], n["invoices"], n["notes"]} <= related

    customer_id = next(e["new"] for e in history if e["field"] == n["customer_id"])
    customer = _json(p, "customer", customer_id)
    assert {e["table"] for e in customer} >= {n["customers"], n["bookings"], n["invoices"]}
    assert {e["booking"] for e in customer if e["table"] != n["customers"]} == {booking}

    today = datetime.now(UTC).date().isoformat()
    log = _json(p, "log", "--since", today)
    # The log holds every entry on the booking and its related rows, labelled; updated_at is
    # configured as noise, so it is left out of the fields (and kept in the warehouse).
    assert [(e["event"], e["actor"], e["label"]) for e in log] == LOGS[p.schema.name]
    assert {e["booking"] for e in log} == {booking}
    price_change = next(e for e in log if e["actor"] == "alice")
    assert price_change["fields"] == n["price"] and price_change["approval_ref"] == "APR-1042"
    assert _json(p, "log", "--since", "2000-01-01", "--until", "2000-01-02") == []

    finn = _json(p, "actor", "finn")
    assert {(e["table"], e["action"]) for e in finn} == {
        (n["bookings"], "update"), (n["notes"], "insert"),
    }  # fmt: skip
    assert all(e["actor_role"] == "fieldworker" for e in finn)
    raw = _json(p, "actor", "postgres")
    assert [(e["field"], e["old"], e["new"]) for e in raw] == [(n["price"], "189.50", "169.50")]
