"""Transaction assembly on the captured session: actors attach to the changes they cover."""

from __future__ import annotations

import pytest

from bookaudit.cdc.decode import Begin, Commit, Insert, Relation
from bookaudit.cdc.transactions import TransactionAssembler, TransactionEnd
from bookaudit.errors import DecodeError
from bookaudit.model import NO_CONTEXT, RowChange
from tests.cdc.fixtures import decoded, resolve


def assemble() -> list[RowChange | TransactionEnd]:
    assembler = TransactionAssembler(resolve)
    return [out for lsn, m in decoded() for out in assembler.feed(lsn, m)]


def test_every_change_carries_the_context_active_when_it_was_made() -> None:
    changes = [o for o in assemble() if isinstance(o, RowChange)]
    actors = [(c.table.name, c.op, c.actor.id, c.actor.role) for c in changes]
    assert actors[:4] == [
        ("customers", "c", "dana", "dispatcher"),
        ("bookings", "c", "dana", "dispatcher"),
        ("bookings", "u", "alice", "admin"),
        ("bookings", "u", "bob", "fieldworker"),
    ]
    assert changes[0].actor.reason == "new customer"
    assert changes[0].actor.request_id == "req-1"
    assert changes[2].actor.approval_ref == "APR-7"


def test_no_application_actor_still_names_the_database_session() -> None:
    note_insert = next(
        o for o in assemble() if isinstance(o, RowChange) and o.table.name == "notes"
    )
    assert note_insert.actor.id is None
    assert note_insert.actor.origin == "db_session"
    assert note_insert.actor.db_user == "postgres"


def test_sequence_numbers_restart_per_transaction_and_commit_lsn_is_shared() -> None:
    outputs = assemble()
    ends = [o for o in outputs if isinstance(o, TransactionEnd)]
    assert [e.changes for e in ends] == [2, 2, 1, 2, 1]
    changes = [o for o in outputs if isinstance(o, RowChange)]
    first_txn = changes[:2]
    assert [c.sequence for c in first_txn] == [0, 1]
    assert first_txn[0].commit_position == first_txn[1].commit_position == ends[0].commit_lsn
    assert first_txn[0].position < first_txn[1].position


def test_unchanged_toast_is_filled_from_the_old_row() -> None:
    update = next(
        o
        for o in assemble()
        if isinstance(o, RowChange) and o.table.name == "notes" and o.op == "u"
    )
    assert update.before is not None and update.after is not None
    assert update.after["body"] == update.before["body"]
    assert len(update.after["body"] or "") > 2000
    assert update.unchanged_toast == ()
    assert (update.before["author"], update.after["author"]) == ("x", "y")


def test_truncate_becomes_a_table_level_change() -> None:
    truncate = next(o for o in assemble() if isinstance(o, RowChange) and o.op == "t")
    assert truncate.table.name == "payments"
    assert truncate.before is None and truncate.after is None


def test_change_without_context_message_is_marked_missing() -> None:
    assembler = TransactionAssembler(resolve)
    relation = next(m for _, m in decoded() if isinstance(m, Relation))
    list(assembler.feed(0, relation))
    list(assembler.feed(1, Begin(100, 0, 7)))
    (change,) = assembler.feed(2, Insert(relation.oid, ("1", "a", None, None, None)))
    assert isinstance(change, RowChange) and change.actor == NO_CONTEXT
    (end,) = assembler.feed(3, Commit(0, 100, 120, 0))
    assert end == TransactionEnd(7, 100, 120, 1)


def test_protocol_violations_raise() -> None:
    assembler = TransactionAssembler(resolve)
    with pytest.raises(DecodeError, match="before its Relation"):
        list(assembler.feed(0, Begin(1, 0, 1)))
        list(assembler.feed(1, Insert(424242, ("x",))))
    with pytest.raises(DecodeError, match="outside a transaction"):
        list(TransactionAssembler(resolve).feed(0, Commit(0, 1, 2, 0)))
