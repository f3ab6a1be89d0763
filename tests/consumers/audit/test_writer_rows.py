"""What the writer stores and hashes, without services: its leaf is the one verify recomputes
from the stored row, and its lane hands batches back in order, or the error that stopped it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from bookaudit.chain import leaf
from bookaudit.consumers.audit.lane import Batch, Pending, WarehouseLane
from bookaudit.consumers.audit.rows import PreparedRow, prepare_row
from bookaudit.consumers.audit.writer import WarehouseWriter
from bookaudit.consumers.records import DeadLetter, Record
from bookaudit.errors import TransientError
from tests.consumers.fixtures import ENTRY


def test_the_leaf_is_the_one_verify_recomputes_from_the_stored_row() -> None:
    row = prepare_row(ENTRY, change_id=77, recorded_at_us=1_795_000_000_200_001)
    # The row as verify reads it back: CHAINED_COLUMNS, positions as ints, times in µs.
    stored = (
        77, "bookings", 2**40 + 5, 3, 2**40 - 8, 901, 1_795_000_000_123_000, "public",
        "bookings", "update", {"id": "7"}, ENTRY.before, ENTRY.after, "alice", "admin", None,
        None, None, None, "app", None, "application", "logical", "ba.public.bookings", 2, 41,
        1_795_000_000_200_001,
    )  # fmt: skip
    fields = (("price", 1, "0.10", "12.50"), ("memo", 2, None, "naïve\ttab \\ back"))
    assert row.leaf == leaf(stored, fields)
    assert row.fields == tuple((77, *f) for f in fields)
    assert row.key == ("bookings", 2**40 + 5, 3)


def test_copy_values_keep_positions_as_pg_lsn_text_and_exact_times() -> None:
    row = prepare_row(ENTRY, change_id=77, recorded_at_us=1_795_000_000_200_001)
    assert row.values[2] == "100/5" and row.values[4] == "FF/FFFFFFF8"
    assert row.values[6] == datetime.fromtimestamp(1_795_000_000, UTC).replace(microsecond=123000)
    assert row.values[-4].microsecond == 200_001
    assert row.values[-2] == '{"id":"7","memo":null,"price":"0.10"}'


class _Writer:
    """Stands in for the warehouse: records what it was given, can be told to fail."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.written: list[int] = []
        self.fail_on = fail_on

    def write(self, rows: list[PreparedRow], dead: list[DeadLetter]) -> int:
        time.sleep(0.01)
        if self.fail_on is not None and len(self.written) == self.fail_on:
            raise TransientError("warehouse write failed: gone")
        self.written.append(len(rows))
        return len(rows)


def _batch(n: int) -> Batch:
    rows = [prepare_row(ENTRY, i, 0) for i in range(n)]
    return Batch([], n, [ENTRY.committed_at_ms] * n, rows, [])


def _lane(writer: _Writer) -> WarehouseLane:
    fake: Any = writer
    lane_writer: WarehouseWriter = fake
    return WarehouseLane(lane_writer)


def test_the_lane_hands_back_every_batch_in_order() -> None:
    writer = _Writer()
    lane = _lane(writer)
    for n in (1, 2, 3, 4, 5):
        lane.submit(_batch(n))
    done = lane.finished(wait=True)
    lane.close()
    assert [d.inserted for d in done] == [1, 2, 3, 4, 5] == writer.written


def test_a_failed_write_stops_the_lane_and_reaches_the_caller() -> None:
    lane = _lane(_Writer(fail_on=1))
    lane.submit(_batch(1))
    with pytest.raises(TransientError, match="gone"):
        for n in (2, 3, 4, 5):
            lane.submit(_batch(n))
        lane.finished(wait=True)
    lane.close()


def test_the_lane_is_busy_while_a_batch_is_written_and_idle_after() -> None:
    lane = _lane(_Writer())
    assert not lane.busy
    lane.submit(_batch(1))
    assert lane.busy
    done = lane.finished(wait=True)
    assert [d.inserted for d in done] == [1] and not lane.busy
    lane.close()


def test_a_pending_batch_joins_polls_and_keeps_one_row_per_event() -> None:
    pending = Pending(limit=3)
    first = [prepare_row(ENTRY, 1, 0)]
    # The same event again in a later poll (a re-send): counted, not stored twice.
    again = [prepare_row(ENTRY, 2, 0)]
    other = [prepare_row(ENTRY._replace(sequence=4), 3, 0)]
    records = [Record("ba.public.bookings", 0, offset, None, b"", ()) for offset in range(3)]
    pending.add(records[:1], [ENTRY.committed_at_ms], first, [])
    pending.add(records[1:2], [ENTRY.committed_at_ms], again, [])
    assert not pending.full()
    pending.add(records[2:], [ENTRY.committed_at_ms], other, [])
    assert pending.full()
    batch = pending.batch()
    assert [r.change_id for r in batch.rows] == [1, 3]
    assert batch.records == records
    assert batch.entries == 3 and len(batch.committed_at_ms) == 3


def test_a_pending_batch_is_written_in_identity_order_whatever_order_its_polls_came_in() -> None:
    """Two writers given overlapping copies must insert in one key order, or their unique-key
    waits cross and PostgreSQL kills one of them as a deadlock."""
    pending = Pending(limit=10)
    late, early, middle = (ENTRY._replace(sequence=s) for s in (9, 1, 5))
    record = Record("ba.public.bookings", 0, 0, None, b"", ())
    pending.add([record], [ENTRY.committed_at_ms], [prepare_row(late, 1, 0)], [])
    pending.add(
        [record, record],
        [ENTRY.committed_at_ms] * 2,
        [prepare_row(early, 2, 0), prepare_row(middle, 3, 0)],
        [],
    )
    batch = pending.batch()
    assert [r.key[2] for r in batch.rows] == [1, 5, 9]
    assert [r.change_id for r in batch.rows] == [2, 3, 1]
