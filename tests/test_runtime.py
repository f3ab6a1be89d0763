"""The long-running stages' collector settings: rare young collections, startup objects frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bookaudit.runtime import YOUNG_THRESHOLD, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_tuning_freezes_what_exists_and_raises_only_the_young_threshold() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    before = gc.get_freeze_count()
    tune_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > before
    assert gc.isenabled()
    # Objects made afterwards are still collected, without being asked: a cycle is freed once
    # the threshold's worth of containers has been allocated after it.
    node = _Node()
    node.me = node
    gone = weakref.ref(node)
    del node
    kept: list[list[object]] = [[] for _ in range(YOUNG_THRESHOLD + 1000)]
    assert gone() is None
    del kept


class _Node:
    me: object = None
