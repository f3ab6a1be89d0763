"""Mapping envelopes to audit entries, and poison records to dead letters, without services."""

from __future__ import annotations

import pytest

from bookaudit.consumers import records
from bookaudit.consumers.records import (
    AuditEntry,
    FieldChange,
    Record,
    changed_fields,
    decode_and_map,
    distinct_entries,
)
from bookaudit.kafka.serde import to_kafka
from bookaudit.model import Lsn, SourceInfo, format_position
from tests.cdc.fixtures import change

ORDER = ["id", "price", "status"]


def test_insert_lists_every_non_null_new_value() -> None:
    after = {"id": "1", "price": "10.00", "status": None}
    assert changed_fields(None, after, ORDER) == (
        FieldChange("id", None, "1"),
        FieldChange("price", None, "10.00"),
    )


def test_update_lists_only_what_differs_in_column_order() -> None:
    before = {"id": "1", "price": "10.00", "status": "new"}
    after = {"id": "1", "price": "10.0", "status": "done"}
    # "10.00" -> "10.0" is a change of the stored text even if numerically equal.
    assert changed_fields(before, after, ORDER) == (
        FieldChange("price", "10.00", "10.0"),
        FieldChange("status", "new", "done"),
    )


def test_delete_lists_every_non_null_old_value() -> None:
    before = {"id": "1", "price": None, "status": "x"}
    assert changed_fields(before, None, ORDER) == (
        FieldChange("id", "1", None),
        FieldChange("status", "x", None),
    )


def test_decode_and_map_routes_poison_to_dead_letters_and_keeps_the_rest() -> None:
    good = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=1)
    records = [
        Record("ba.public.booking_lines", 0, 10, good.key, good.value, good.headers),
        Record("ba.public.booking_lines", 0, 11, b"k", b"\x02garbage"),
        Record("ba.public.booking_lines", 0, 12, None, None),
    ]
    entries, dead = decode_and_map(records)
    assert len(entries) == 1
    entry = entries[0]
    assert entry.action == "update"
    assert entry.actor.id == "alice"
    assert entry.row_key == {"booking_id": "7", "line_no": "2"}
    assert entry.commit_position == 0x1_0000_0000
    assert [f.field for f in entry.fields] == ["price", "memo"]
    assert [d.record.offset for d in dead] == [11, 12]
    assert "ba.public.booking_lines[0]@11" in dead[0].error


def test_a_record_without_the_schema_header_is_a_dead_letter() -> None:
    good = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=1)
    entries, dead = decode_and_map([Record("ba.public.booking_lines", 1, 5, good.key, good.value)])
    assert entries == []
    assert [d.error for d in dead] == [
        "ba.public.booking_lines[1]@5: no bookaudit.schema header: not a record bookaudit wrote"
    ]


def test_a_mapper_bug_stops_the_batch_instead_of_dead_lettering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only records that do not decode are set aside; a failure of ours must surface, so the
    consumer stops before its offsets move and no good record is quietly parked."""

    def broken(_decoded: object) -> AuditEntry:
        raise KeyError("price")

    monkeypatch.setattr(records, "to_audit_entry", broken)
    good = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=1)
    with pytest.raises(KeyError, match="price"):
        decode_and_map(
            [Record("ba.public.booking_lines", 0, 1, good.key, good.value, good.headers)]
        )


def test_distinct_entries_keeps_the_first_copy_in_identity_order() -> None:
    def entry(lsn: int, sequence: int, offset: int) -> AuditEntry:
        good = to_kafka(change(), SourceInfo("bookings", "db"), "ba", now_ms=1)
        [mapped], _ = decode_and_map(
            [Record("ba.public.booking_lines", 0, offset, None, good.value, good.headers)]
        )
        return mapped._replace(commit_position=Lsn(lsn), sequence=sequence)

    late, early, early_copy, early_next = (
        entry(2**32, 0, 1),
        entry(16, 0, 2),
        entry(16, 0, 3),
        entry(16, 1, 4),
    )
    kept = distinct_entries([late, early, early_copy, early_next, late])
    # 0/10 sorts before 1/0 as a position, not as text; the later copy of 0/10#0 is dropped.
    assert [(format_position(e.commit_position), e.sequence, e.kafka_offset) for e in kept] == [
        ("0/10", 0, 2),
        ("0/10", 1, 4),
        ("1/0", 0, 1),
    ]
