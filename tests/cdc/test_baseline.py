"""Baseline rows as snapshot events, and how the audit writer records them, without services."""

from __future__ import annotations

from bookaudit.cdc.baseline import BaselinePlan, StagedTable, baseline_change
from bookaudit.consumers.records import Record, decode_and_map
from bookaudit.kafka.serde import ENVELOPE_SCHEMA, decode, to_kafka
from bookaudit.model import BASELINE_LABEL, Lsn, SourceInfo
from tests.cdc.fixtures import TABLE

PLAN = BaselinePlan(
    position=Lsn(0x5_0000_0FFF),
    started_unix_ms=1_795_000_000_000,
    total_rows=5,
    tables=(),
)
# The second table of the baseline: its rows are events 3 and 4 of 0..4.
STAGED = StagedTable(2, "public", "booking_lines", "baseline_2", TABLE.key, 3, 2, 0)
ROW = {"booking_id": "7", "line_no": "2", "price": "10.00", "memo": None}


def test_a_staged_row_is_a_read_event_numbered_after_the_tables_before_it() -> None:
    first = baseline_change(TABLE, ROW, seq=1, staged=STAGED, plan=PLAN)
    assert (first.op, first.before, first.after) == ("r", None, ROW)
    assert (first.commit_position, first.sequence, first.data_collection_order) == (
        0x5_0000_0FFF,
        3,
        0,
    )
    assert first.commit_unix_ms == PLAN.started_unix_ms
    assert first.actor.origin == "baseline" and first.actor.display == BASELINE_LABEL
    assert first.snapshot == "true"
    assert baseline_change(TABLE, ROW, seq=2, staged=STAGED, plan=PLAN).snapshot == "last"


def test_the_envelope_says_snapshot_and_the_writer_records_it_as_existing() -> None:
    change = baseline_change(TABLE, ROW, seq=2, staged=STAGED, plan=PLAN)
    record = to_kafka(change, SourceInfo("bookings", "db"), "ba", now_ms=9)
    envelope = decode(ENVELOPE_SCHEMA, record.value)
    assert (envelope["op"], envelope["source"]["snapshot"]) == ("r", "last")
    [entry], dead = decode_and_map(
        [Record(record.topic, 0, 1, record.key, record.value, record.headers)]
    )
    assert dead == []
    assert entry.action == "existing"
    assert entry.row_key == {"booking_id": "7", "line_no": "2"}
    # Every value it had, as an insert lists them: the history starts from the full row.
    assert [(f.field, f.old, f.new) for f in entry.fields] == [
        ("booking_id", None, "7"),
        ("line_no", None, "2"),
        ("price", None, "10.00"),
    ]
