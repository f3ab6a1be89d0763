"""The campaign's schedule and reconciliation, without services."""

from __future__ import annotations

from tests.faults.plan import KINDS, OUTAGES, plan_faults, reconcile


def test_schedule_has_every_kind_and_replays_from_its_seed() -> None:
    plan = plan_faults(seed=7, count=50)
    assert len(plan) == 50 and {f.kind for f in plan} == set(KINDS)
    assert plan == plan_faults(seed=7, count=50)
    assert plan != plan_faults(seed=8, count=50)
    assert all((f.down_s > 0) == (f.kind in OUTAGES) for f in plan)


def test_reconcile_counts_lost_doubled_and_phantom_changes() -> None:
    truth = [("a", "bookings", "u", 1), ("a", "bookings", "u", 2), ("b", "notes", "d", 2)]
    recorded = [("a", "bookings", "u", 1), ("a", "bookings", "u", 1), ("b", "notes", "d", 2),
                ("b", "notes", "c", 9)]  # fmt: skip
    result = reconcile(truth, recorded)
    assert (result.changes, result.lost, result.doubled, result.phantom) == (3, 1, 1, 1)
    assert not result.exact
    assert "lost a.bookings u rev 2" in result.examples
    assert reconcile(truth, truth).exact
