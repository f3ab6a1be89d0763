"""A lost slot is named in one line with what was lost and what to do."""

from __future__ import annotations

from datetime import UTC, datetime

from bookaudit.cdc.gaps import Confirmed, SlotCondition, lost_slot_message


def test_a_healthy_slot_is_not_lost() -> None:
    assert SlotCondition(True, "reserved").lost is None
    assert SlotCondition(True, "extended").lost is None


def test_missing_and_invalidated_slots_say_why() -> None:
    assert "does not exist" in (SlotCondition(False).lost or "")
    invalidated = SlotCondition(True, "lost").lost or ""
    assert "invalidated" in invalidated and "max_slot_wal_keep_size" in invalidated


def test_the_message_names_slot_lost_range_and_the_way_on() -> None:
    at = datetime(2026, 11, 26, 20, 1, 2, tzinfo=UTC)
    text = lost_slot_message("books", "was invalidated", Confirmed(0x1A2B3C, at), 0x2000000)
    assert "\n" not in text
    assert "'books' was invalidated" in text
    assert "after 0/1A2B3C" in text and "2026-11-26 20:01:02" in text and "0/2000000" in text
    assert "--accept-gap" in text
    never = lost_slot_message("books", "does not exist", None, 5)
    assert "no position was ever confirmed" in never
