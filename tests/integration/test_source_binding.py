"""Two source databases left at the same source name feed one warehouse: the first binds the
name, the other's events become dead letters naming both databases, and nothing is mixed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devstack import StackEnv
from tests.integration.harness import Pipeline


@pytest.fixture(params=["logical", "trigger"])
def same_name(
    stack: StackEnv, request: pytest.FixtureRequest
) -> Iterator[tuple[Pipeline, Pipeline]]:
    # Both keep the default source name, as two installs from the quick start would.
    first = Pipeline(stack, mode=request.param).create()
    second = Pipeline(stack, mode=request.param, shared_with=first)
    assert first.source_name == second.source_name
    try:
        second.create()
        yield first, second
    finally:
        second.drop()
        first.drop()


def test_a_second_database_under_a_taken_name_is_dead_lettered(
    same_name: tuple[Pipeline, Pipeline],
) -> None:
    first, second = same_name
    booking = first.play_day()
    assert second.play_day() == booking  # same tables, same keys, same name
    with second.source() as conn:
        conn.execute("SELECT bookaudit.set_actor('sam', role => 'dispatcher')")
        conn.execute("UPDATE bookings SET price = 999.00 WHERE id = %s", (booking,))
    first_sent = first.capture().changes
    first.consume()
    second_sent = second.capture().changes
    stats = first.consume()

    # The warehouse holds the first database's events, all of them, and none of the second's.
    assert first.warehouse("SELECT count(*) FROM audit.row_changes") == [(first_sent,)]
    assert first.warehouse(
        "SELECT count(*) FROM audit.field_changes WHERE new_value = '999.00'"
    ) == [(0,)]
    # The second's are kept whole, each with one line saying why and what to do.
    assert stats.dead_letters == second_sent > 0
    errors = first.warehouse("SELECT error, length(value) > 0 FROM audit.dead_letters")
    assert len(errors) == second_sent
    identities = first.warehouse("SELECT name, identity FROM audit.source_bindings")
    assert [name for name, _ in identities] == [first.source_name]
    bound = identities[0][1]
    assert bound.endswith(f"/{first.name}_src")
    for error, has_value in errors:
        assert has_value
        assert "\n" not in error
        assert f"source {first.source_name!r} belongs to database {bound!r}" in error
        assert f"/{second.name}_src'" in error
        assert "give each capture its own --source-name" in error

    # The alerts job keeps them apart too: the second database's 999.00 edit by a dispatcher
    # would raise an alert; it is a dead letter there as well, so it raises none.
    alerted = first.alerts()
    assert alerted.dead_letters >= 1
    listed_alerts = json.loads(first.cli("alerts", "list", "--format", "json").stdout)
    assert listed_alerts  # the first database's day raises its own alerts
    assert all(a["new_price"] != "999.00" for a in listed_alerts)

    listed = first.cli("warehouse", "sources").stdout.splitlines()
    assert len(listed) == 1
    assert listed[0].startswith(f"{first.source_name}\t{bound}\tbound ")
    assert listed[0].endswith(f"\t{first_sent} entries")
    released = first.cli("warehouse", "sources", "--release", first.source_name)
    assert f"released from database {bound!r}" in released.stderr
    assert first.warehouse("SELECT count(*) FROM audit.source_bindings") == [(0,)]
    again = first.cli("warehouse", "sources", "--release", first.source_name, check=False)
    assert again.returncode == 1
    assert f"source {first.source_name!r} is not bound in this warehouse" in again.stderr
