"""Interpreter settings for the long-running stages (capture, audit writer), set as they start."""

from __future__ import annotations

import gc

# Python collects its youngest generation after every 700 net container allocations. The
# stages allocate several containers per change, nearly all freed by reference counting
# before any collection sees them, so at the default the collector ran every few dozen changes
# and took 8 % of the writer's busy CPU at 2,500 changes/s (py-spy). Collections this rare
# still bound what a reference cycle can hold.
YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    """Collect rarely, and never again walk the objects that exist by now (the imported modules
    and their schemas): they live as long as the process. Garbage is collected first, or it
    would be kept for good."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
