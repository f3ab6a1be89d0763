"""Gives each integration test a fresh pipeline on the shared real stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bookaudit.stack import StackEnv
from tests.integration.harness import Pipeline


@pytest.fixture
def pipeline(stack: StackEnv) -> Iterator[Pipeline]:
    p = Pipeline(stack).create()
    yield p
    p.drop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
