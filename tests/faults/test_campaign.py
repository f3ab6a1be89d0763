"""The short fault campaign, as CI runs it: every fault kind at least once, on a stack of its own."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

from tests.faults.campaign import SHORT, CampaignSettings, run_campaign
from tests.faults.plan import KINDS


@pytest.mark.integration
@pytest.mark.slow
def test_short_fault_campaign_loses_and_doubles_nothing() -> None:
    # Its own stack (it restarts Kafka and PostgreSQL), in a short path: unix socket paths are
    # limited in length. BOOKAUDIT_FAULTS_SEED replays a failed run's schedule.
    seed = int(os.environ.get("BOOKAUDIT_FAULTS_SEED") or random.SystemRandom().randrange(10**9))
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bookaudit-faults-") as state_dir:
        settings = CampaignSettings(
            state_dir=Path(state_dir) / "stack",
            seed=seed,
            faults=int(SHORT["faults"]),
            changes=int(SHORT["changes"]),
            rate=float(SHORT["rate"]),
        )
        result = run_campaign(settings, lines.append)
    report = "\n".join(lines)
    print(report)
    assert {r.fault.kind for r in result.recoveries} == set(KINDS), report
    assert result.changes.changes >= settings.changes, report
    assert (result.changes.lost, result.changes.doubled, result.changes.phantom) == (0, 0, 0), (
        report
    )
    assert (result.alerts.lost, result.alerts.doubled, result.alerts.phantom) == (0, 0, 0), report
    assert result.alerts.changes == 2 * len(result.recoveries), report
    assert result.chain_ok, report
