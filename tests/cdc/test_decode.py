"""The pgoutput decoder on bytes captured from a real server, and on broken input."""

from __future__ import annotations

import struct

import pytest

from bookaudit.cdc.decode import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Relation,
    Truncate,
    Update,
    XLogData,
    decode_copy_data,
    decode_message,
    standby_status,
)
from bookaudit.errors import DecodeError
from tests.cdc.fixtures import captured, decoded


def test_captured_session_decodes_to_the_expected_message_kinds() -> None:
    kinds = [type(m).__name__ for _, m in decoded()]
    assert kinds == [
        "Begin", "LogicalMessage", "Relation", "Insert", "Relation", "Insert", "Commit",
        "Begin", "LogicalMessage", "Update", "LogicalMessage", "Update", "Commit",
        "Begin", "LogicalMessage", "Relation", "Insert", "Commit",
        "Begin", "LogicalMessage", "Update", "Delete", "Commit",
        "Begin", "LogicalMessage", "Relation", "Truncate", "Commit",
    ]  # fmt: skip


def test_begin_and_commit_agree_on_the_commit_lsn() -> None:
    messages = [m for _, m in decoded()]
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert [b.final_lsn for b in begins] == [c.commit_lsn for c in commits]
    assert all(c.end_lsn > c.commit_lsn for c in commits)
    assert all(b.commit_time.year >= 2024 for b in begins)


def test_relation_carries_names_types_and_full_identity() -> None:
    bookings = next(m for _, m in decoded() if isinstance(m, Relation) and m.name == "bookings")
    assert bookings.namespace == "public"
    assert bookings.replica_identity == "f"
    names = [c.name for c in bookings.columns]
    assert names[:3] == ["id", "customer_id", "service"]
    price = bookings.columns[names.index("price")]
    assert price.type_oid == 1700  # numeric
    assert price.type_modifier == ((12 << 16) | 2) + 4  # numeric(12,2)


def test_row_values_keep_postgres_text_form() -> None:
    inserts = [m for _, m in decoded() if isinstance(m, Insert)]
    booking = inserts[1]
    assert "149.90" in booking.new
    assert None in booking.new  # scheduled_end is NULL


def test_update_carries_the_full_old_row_and_unchanged_toast_marker() -> None:
    updates = [m for _, m in decoded() if isinstance(m, Update)]
    price_update = updates[0]
    assert price_update.old is not None and not price_update.old_is_key_only
    assert "149.90" in price_update.old and "199.99" in price_update.new
    note_update = updates[2]
    assert UNCHANGED_TOAST in note_update.new
    assert note_update.old is not None and UNCHANGED_TOAST not in note_update.old


def test_context_message_is_transactional_json() -> None:
    message = next(m for _, m in decoded() if isinstance(m, LogicalMessage))
    assert message.transactional
    assert message.prefix == "bookaudit.context"
    assert b'"actor": "dana"' in message.content


def test_delete_and_truncate() -> None:
    messages = [m for _, m in decoded()]
    delete = next(m for m in messages if isinstance(m, Delete))
    assert not delete.old_is_key_only and "y" in delete.old
    truncate = next(m for m in messages if isinstance(m, Truncate))
    assert len(truncate.relation_oids) == 1


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_truncated_messages_raise_decode_error(cut: int) -> None:
    _, raw = captured()[3]  # an Insert
    with pytest.raises(DecodeError):
        decode_message(raw[:cut])


def test_unknown_tag_names_the_tag() -> None:
    with pytest.raises(DecodeError, match="unknown pgoutput message tag 'Z'"):
        decode_message(b"Z\x00")


def test_copy_data_framing() -> None:
    payload = captured()[0][1]
    frame = decode_copy_data(b"w" + struct.pack("!QQq", 10, 20, 30) + payload)
    assert frame == XLogData(10, 20, 30, payload)
    keepalive = decode_copy_data(b"k" + struct.pack("!Qq?", 99, 5, True))
    assert keepalive == Keepalive(99, 5, True)
    with pytest.raises(DecodeError):
        decode_copy_data(b"k\x00")


def test_standby_status_reports_one_lsn_three_times() -> None:
    status = standby_status(0x1_0000_0010, now_us=7, reply_requested=True)
    tag, write, flush, apply, ts, reply = struct.unpack("!cQQQqB", status)
    assert (tag, write, flush, apply, ts, reply) == (
        b"r",
        0x100000010,
        0x100000010,
        0x100000010,
        7,
        1,
    )
