"""Gives each integration test a fresh pipeline on the shared real stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack import StackEnv
from tests.integration.harness import Pipeline
from tests.integration.schemas import SCHEMAS, Key, Schema


@pytest.fixture(params=["logical", "trigger"])
def pipeline(stack: StackEnv, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """Every pipeline test runs in both capture modes: consumers must not tell them apart."""
    p = Pipeline(stack, mode=request.param).create()
    yield p
    p.drop()


@pytest.fixture(params=SCHEMAS, ids=[s.name for s in SCHEMAS])
def schema(request: pytest.FixtureRequest) -> Schema:
    """The sample schema, and one that shares none of its names, read through its entity map."""
    found: Schema = request.param
    return found


@pytest.fixture(params=["logical", "trigger"])
def schema_pipeline(
    stack: StackEnv, schema: Schema, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    """A pipeline on each schema in both capture modes."""
    p = Pipeline(stack, mode=request.param, schema=schema).create()
    yield p
    p.drop()


@pytest.fixture(params=["logical", "trigger"])
def fresh(stack: StackEnv, schema: Schema, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """A source on each schema in both capture modes with no bookaudit yet, as a platform team
    finds it: the test installs it."""
    p = Pipeline(stack, mode=request.param, schema=schema).create(install=False)
    yield p
    p.drop()


@pytest.fixture
def booking(schema_pipeline: Pipeline) -> Key:
    """One booking at 100.00 on `schema_pipeline`, written by the actor `seed`."""
    [key] = schema_pipeline.seed()
    return key


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
