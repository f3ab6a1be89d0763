"""Pure parts of the fault campaign: the fault schedule drawn from a seed, and reconciliation."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

KILLS = ("kill-capture", "kill-relay", "kill-writer", "kill-alerts")
OUTAGES = ("restart-kafka", "restart-postgres", "warehouse-outage")
KINDS = KILLS + OUTAGES
# (source name, table, op c/u/d, rev): one change, as the source recorded it in fc_truth.
Identity = tuple[str, str, str, int]


@dataclass(frozen=True)
class Fault:
    """One fault: what, after how long a quiet spell, and how long a service stays down."""

    number: int
    kind: str
    pause_s: float
    down_s: float


def plan_faults(seed: int, count: int) -> list[Fault]:
    """Every kind at least once (when count allows), the rest drawn at random, in random order;
    the same seed gives the same schedule, so a failing run can be replayed."""
    rnd = random.Random(seed)
    kinds = list(KINDS[:count]) + [rnd.choice(KINDS) for _ in range(count - len(KINDS))]
    rnd.shuffle(kinds)
    return [
        Fault(
            number=i + 1,
            kind=kind,
            pause_s=round(rnd.uniform(0.2, 3.0), 2),
            down_s=round(rnd.uniform(1.0, 8.0), 2) if kind in OUTAGES else 0.0,
        )
        for i, kind in enumerate(kinds)
    ]


@dataclass(frozen=True)
class Reconciliation:
    """The warehouse against the sources' own record of what they committed."""

    changes: int
    lost: int
    doubled: int
    phantom: int
    examples: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return self.changes > 0 and not (self.lost or self.doubled or self.phantom)


def reconcile(truth: Iterable[Identity], recorded: Iterable[Identity]) -> Reconciliation:
    """Lost: committed but not in the warehouse. Doubled: in the warehouse more than once.
    Phantom: in the warehouse but never committed."""
    expected = Counter(truth)
    got = Counter(recorded)
    lost = [i for i in expected if i not in got]
    doubled = [i for i, n in got.items() if n > 1]
    phantom = [i for i in got if i not in expected]
    examples = tuple(
        f"{what} {source}.{table} {op} rev {rev}"
        for what, found in (("lost", lost), ("doubled", doubled), ("phantom", phantom))
        for source, table, op, rev in sorted(found)[:3]
    )
    return Reconciliation(
        changes=sum(expected.values()),
        lost=len(lost),
        doubled=sum(got[i] - 1 for i in doubled),
        phantom=len(phantom),
        examples=examples,
    )
