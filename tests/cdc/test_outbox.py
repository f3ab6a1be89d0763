"""Trigger-mode mapping: outbox rows become the RowChange logical decoding would have made."""

from __future__ import annotations

import pytest

from bookaudit.cdc.outbox import OutboxCommit, OutboxRow, OutboxTransaction, pairs_to_row
from bookaudit.errors import DecodeError
from bookaudit.kafka.serde import envelope_record
from bookaudit.model import NO_CONTEXT, ActorContext, CommitSeq, SourceInfo, TableSchema

BOOKINGS = TableSchema(
    oid=16400,
    schema="public",
    name="bookings",
    columns=("id", "price", "status"),
    types=("bigint", "numeric(12,2)", "text"),
    key=("id",),
)
NOTES = TableSchema(16500, "public", "notes", ("id", "body"), ("bigint", "text"), ("id",))
COMMIT = OutboxCommit(commit_seq=CommitSeq(0x1_0000_0042), txid=(3 << 32) | 901, changes=3,
                      committed_unix_ms=1_795_000_000_123)  # fmt: skip
ALICE = ActorContext(origin="application", id="alice", role="admin")
BOB = ActorContext(origin="application", id="bob")


ALICE_JSON = '{"actor": "alice", "role": "admin", "origin": "application"}'
BOB_JSON = '{"actor": "bob", "origin": "application"}'


def row(
    seq: int,
    table: str = "bookings",
    op: str = "u",
    context_seq: int = 0,
    context: str | None = None,
) -> OutboxRow:
    old = ["price", "149.00", "id", "7", "status", None] if op in "ud" else None
    new = ["status", "done", "id", "7", "price", "149.90"] if op in "cu" else None
    if context is None and seq == context_seq == 0:
        context = ALICE_JSON
    return OutboxRow(COMMIT.txid, seq, context_seq, "public", table, op, old, new, context)


def test_values_follow_column_order_and_keep_their_exact_text() -> None:
    change = OutboxTransaction(COMMIT).change(row(0), BOOKINGS)
    assert change.before == {"id": "7", "price": "149.00", "status": None}
    assert change.after == {"id": "7", "price": "149.90", "status": "done"}
    assert list(change.after) == ["id", "price", "status"]


def test_commit_seq_is_the_position_and_xid_is_32_bit() -> None:
    change = OutboxTransaction(COMMIT).change(row(2), BOOKINGS)
    assert (change.commit_position, change.position, change.sequence) == (
        COMMIT.commit_seq,
    ) * 2 + (2,)
    assert change.xid == 901
    assert change.commit_unix_ms == COMMIT.committed_unix_ms
    env = envelope_record(change, SourceInfo("bookings", "db", mode="trigger"), now_ms=1)
    assert env["source"]["mode"] == "trigger"
    assert env["transaction"] == {
        "id": f"901:{COMMIT.commit_seq}",
        "total_order": 3,
        "data_collection_order": 1,
    }


def test_each_change_takes_the_context_it_points_at() -> None:
    txn = OutboxTransaction(COMMIT)
    actors = [
        txn.change(row(0, context_seq=0), BOOKINGS).actor,
        txn.change(row(1, "notes", "c", context_seq=0), NOTES).actor,
        txn.change(row(2, context_seq=2, context=BOB_JSON), BOOKINGS).actor,
        txn.change(row(3, context_seq=2), BOOKINGS).actor,
        txn.change(row(4, context_seq=9), BOOKINGS).actor,
    ]
    assert actors == [ALICE, ALICE, BOB, BOB, NO_CONTEXT]


def test_per_table_order_counts_across_pages() -> None:
    txn = OutboxTransaction(COMMIT)
    orders = [txn.change(row(i, t), s).data_collection_order
              for i, (t, s) in enumerate([("bookings", BOOKINGS), ("notes", NOTES),
                                          ("bookings", BOOKINGS)])]  # fmt: skip
    assert orders == [0, 0, 1]


def test_truncate_and_delete_shapes() -> None:
    txn = OutboxTransaction(COMMIT)
    truncate = txn.change(row(0, op="t"), BOOKINGS)
    assert (truncate.op, truncate.before, truncate.after) == ("t", None, None)
    delete = txn.change(row(1, op="d"), BOOKINGS)
    assert delete.after is None and delete.before is not None


def test_bad_rows_are_refused_naming_the_culprit() -> None:
    txn = OutboxTransaction(COMMIT)
    with pytest.raises(DecodeError, match="unknown op 'x'"):
        txn.change(row(0, op="x"), BOOKINGS)
    other = OutboxRow(COMMIT.txid + 1, 0, 0, "public", "bookings", "c", None, ["id", "1"])
    with pytest.raises(DecodeError, match="fed to txid"):
        txn.change(other, BOOKINGS)
    with pytest.raises(DecodeError, match="odd hstore"):
        pairs_to_row(["id"], BOOKINGS)
    with pytest.raises(DecodeError, match="NULL key"):
        pairs_to_row([None, "1"], BOOKINGS)
    with pytest.raises(DecodeError, match="not JSON"):
        txn.change(row(5, context_seq=5, context="{oops"), BOOKINGS)
