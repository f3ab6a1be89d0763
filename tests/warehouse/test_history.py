"""The read side's pure parts: time options, value display, entry grouping and the renderers."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bookaudit.errors import ConfigError
from bookaudit.warehouse.history import (
    BASELINE_EVENT,
    actor_totals,
    booking_counts,
    entries,
    parse_moment,
    parse_zone,
    render_csv,
    render_json,
    render_log,
    render_table,
    show_value,
    timeline_table_rows,
)

AMS = ZoneInfo("Europe/Amsterdam")


def test_dates_and_timestamps_are_read_in_the_chosen_zone() -> None:
    assert parse_moment("2026-11-27", AMS, "--since") == datetime(2026, 11, 27, tzinfo=AMS)
    assert parse_moment("2026-11-27", AMS, "--until", end_of_day=True) == datetime(
        2026, 11, 28, tzinfo=AMS
    )
    assert parse_moment("2026-11-27 14:05", AMS, "--as-of") == datetime(
        2026, 11, 27, 14, 5, tzinfo=AMS
    )
    # An explicit offset wins over --tz.
    assert parse_moment("2026-11-27T14:05:00+00:00", AMS, "--as-of") == datetime(
        2026, 11, 27, 14, 5, tzinfo=UTC
    )
    with pytest.raises(ConfigError, match="--since 'yesterday' is not a date"):
        parse_moment("yesterday", AMS, "--since")
    with pytest.raises(ConfigError, match="--tz 'Mars/Olympus'"):
        parse_zone("Mars/Olympus")


def test_timestamps_shown_in_zone_other_values_exact() -> None:
    assert show_value("2026-11-27 08:00:00+00", AMS) == "27 Nov 2026 09:00"
    assert show_value("2026-11-27 08:00:00.25+00", UTC) == "27 Nov 2026 08:00"
    assert show_value("149.90", AMS) == "149.90"
    assert show_value(None, AMS) == "-"


def _row(
    change: int, field: str | None, old: str | None, new: str | None, **kw: object
) -> dict[str, object]:
    return {
        "change_id": change, "committed_at": datetime(2026, 11, 26, 8, 5, tzinfo=UTC),
        "booking_id": "1", "source": "bookings", "table": "bookings", "row_id": "1",
        "action": kw.get("action", "update"), "label": kw.get("label", "Updated"),
        "actor": "dana", "actor_role": "dispatcher", "approval_ref": kw.get("approval_ref"),
        "reason": None, "txid": 7, "field": field, "old": old, "new": new,
    }  # fmt: skip


def test_per_field_rows_become_one_entry_per_row_change() -> None:
    rows = [
        _row(1, "service", None, "Boiler", action="insert", label="Booking created"),
        _row(1, "price", None, "149.00", action="insert", label="Booking created"),
        _row(2, "price", "149.00", "189.50", label="Price changed", approval_ref="APR-1"),
        _row(3, "scheduled_start", "2026-11-27 08:00:00+00", "2026-11-28 14:00:00+00",
             label="Rescheduled"),
    ]  # fmt: skip
    shown = timeline_table_rows(entries(rows), AMS)
    assert [(r["what"], r["by"], r["changes"], r["approval / reason"]) for r in shown] == [
        ("Booking created", "dana (dispatcher)", "service Boiler, price 149.00", ""),
        ("Price changed", "dana (dispatcher)", "price 149.00 → 189.50", "approval APR-1"),
        ("Rescheduled", "dana (dispatcher)",
         "scheduled_start 27 Nov 2026 09:00 → 28 Nov 2026 15:00", ""),
    ]  # fmt: skip
    assert shown[0]["when"] == "2026-11-26 09:05:00"


def test_table_escapes_control_characters_json_and_csv_stay_exact() -> None:
    actor = "mallory\n2026-01-01  fake line \x1b[31mred"
    rows = [{"actor": actor, "at": datetime(2026, 11, 26, 8, 5, 1, 123000, tzinfo=UTC)}]
    table = render_table(rows)
    assert "\x1b" not in table and len(table.splitlines()) == 3
    assert "\\n2026-01-01" in table and "\\x1b[31m" in table
    assert '"mallory\\n2026-01-01  fake line \\u001b[31mred"' in render_json(rows)
    assert "2026-11-26 08:05:01.123+00:00" in render_json(rows)
    csv_text = render_csv(rows, ["actor", "at"])
    assert csv_text.startswith("actor,at\n") and actor in csv_text


def _log_row(booking: str, event: str, actor: str, **flags: bool) -> dict[str, object]:
    names = ("rescheduled", "cancelled", "price_changed", "status_changed")
    return {"booking_id": booking, "event": event, "actor": actor} | {
        n: flags.get(n, False) for n in names
    }


def test_baseline_entries_are_neither_modifications_nor_anybody_s_work() -> None:
    log = [
        _log_row("1", BASELINE_EVENT, "(existing at install)"),
        _log_row("2", BASELINE_EVENT, "(existing at install)"),
        _log_row("2", "modified", "dana", rescheduled=True),
        _log_row("3", "created", "alice"),
    ]
    counts = booking_counts(log)
    assert [(c["booking_id"], c["existing"], c["created"]) for c in counts] == [
        ("1", 1, 0),
        ("2", 1, 0),
        ("3", 0, 1),
    ]
    totals = actor_totals(log)
    assert [(t["actor"], t["entries"], t["reschedules"]) for t in totals] == [
        ("alice", 1, 0),
        ("dana", 1, 1),
    ]
    head = render_log([], counts, totals, UTC, "today").splitlines()[0]
    assert (
        head == "Booking History Log today: 1 created, 1 modified, 2 existing at install, 0 entries"
    )
