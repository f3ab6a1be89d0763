"""Transaction assembly on the captured session: actors attach to the changes they cover."""

from __future__ import annotations

import pytest

from bookaudit.cdc.decode import Begin, Commit, Insert, LogicalMessage, Relation
from bookaudit.cdc.transactions import (
    FORGED,
    TransactionAssembler,
    TransactionEnd,
    sign_context,
)
from bookaudit.errors import DecodeError
from bookaudit.model import CONTEXT_PREFIX, NO_CONTEXT, ActorContext, RowChange
from tests.cdc.fixtures import TEST_KEY, decoded, resolve, signed


def assemble() -> list[RowChange | TransactionEnd]:
    assembler = TransactionAssembler(resolve, TEST_KEY)
    return [out for lsn, m in signed() for out in assembler.feed(lsn, m)]


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
    assembler = TransactionAssembler(resolve, TEST_KEY)
    relation = next(m for _, m in decoded() if isinstance(m, Relation))
    list(assembler.feed(0, relation))
    list(assembler.feed(1, Begin(100, 0, 7)))
    (change,) = assembler.feed(2, Insert(relation.oid, ("1", "a", None, None, None)))
    assert isinstance(change, RowChange) and change.actor == NO_CONTEXT
    (end,) = assembler.feed(3, Commit(0, 100, 120, 0))
    assert end == TransactionEnd(7, 100, 120, 1)


def test_protocol_violations_raise() -> None:
    assembler = TransactionAssembler(resolve, TEST_KEY)
    with pytest.raises(DecodeError, match="before its Relation"):
        list(assembler.feed(0, Begin(1, 0, 1)))
        list(assembler.feed(1, Insert(424242, ("x",))))
    with pytest.raises(DecodeError, match="outside a transaction"):
        list(TransactionAssembler(resolve, TEST_KEY).feed(0, Commit(0, 1, 2, 0)))


_GENUINE = (
    b'{"actor": "ann", "role": "dispatcher", "db_user": "app", "client_addr": "10.0.0.5", '
    b'"application": "web", "origin": "application"}'
)
_FORGED = (
    b'{"actor": "boss", "approval_ref": "APR-FAKE", "db_user": "postgres", '
    b'"client_addr": "10.9.9.9", "origin": "application"}'
)


def _one_transaction(*messages: LogicalMessage, xid: int = 7) -> RowChange:
    """Feeds Begin, the messages, one insert and the commit; returns the insert's change."""
    assembler = TransactionAssembler(resolve, TEST_KEY)
    relation = next(m for _, m in decoded() if isinstance(m, Relation))
    list(assembler.feed(0, relation))
    list(assembler.feed(1, Begin(100, 0, xid)))
    for m in messages:
        list(assembler.feed(2, m))
    (change,) = assembler.feed(3, Insert(relation.oid, ("1", "a", None, None, None)))
    list(assembler.feed(4, Commit(0, 100, 120, 0)))
    assert isinstance(change, RowChange)
    return change


def _message(content: bytes, transactional: bool = True) -> LogicalMessage:
    return LogicalMessage(transactional, 2, CONTEXT_PREFIX, content)


def test_signed_context_is_trusted() -> None:
    actor = _one_transaction(_message(sign_context(TEST_KEY, 7, _GENUINE))).actor
    assert (actor.id, actor.db_user, actor.client_addr, actor.origin) == (
        "ann", "app", "10.0.0.5", "application",
    )  # fmt: skip


@pytest.mark.parametrize(
    "content",
    [
        _FORGED,  # what pg_logical_emit_message lets any role write
        sign_context(bytes(32), 7, _FORGED),  # another key
        sign_context(TEST_KEY, 8, _FORGED),  # signed for another transaction
        sign_context(TEST_KEY, 7, _GENUINE)[:-1] + b" }",  # altered after signing
        b"0" * 64 + b" " + _FORGED,
    ],
)
def test_a_context_that_fails_the_check_is_never_trusted(content: bytes) -> None:
    alone = _one_transaction(_message(content)).actor
    assert alone == ActorContext(origin=FORGED)
    after_genuine = _one_transaction(
        _message(sign_context(TEST_KEY, 7, _GENUINE)), _message(content)
    ).actor
    # The real database facts stay; the change is flagged, whatever the forgery said.
    assert after_genuine.to_dict() == {
        **ActorContext.from_message(_GENUINE).to_dict(), "origin": FORGED,
    }  # fmt: skip
    before_genuine = _one_transaction(
        _message(content), _message(sign_context(TEST_KEY, 7, _GENUINE))
    ).actor
    assert before_genuine.origin == FORGED and before_genuine.db_user == "app"
    assert before_genuine.approval_ref is None


def test_non_transactional_context_is_flagged_inside_a_transaction() -> None:
    actor = _one_transaction(
        _message(sign_context(TEST_KEY, 7, _GENUINE)),
        _message(sign_context(TEST_KEY, 7, _FORGED), transactional=False),
    ).actor
    assert (actor.origin, actor.db_user) == (FORGED, "app")


def test_a_document_seen_before_is_still_checked_against_each_transaction() -> None:
    """The assembler remembers parsed documents; a signature is verified every time."""
    assembler = TransactionAssembler(resolve, TEST_KEY)
    relation = next(m for _, m in decoded() if isinstance(m, Relation))
    list(assembler.feed(0, relation))

    def actor_of(xid: int, content: bytes) -> ActorContext:
        list(assembler.feed(1, Begin(100, 0, xid)))
        list(assembler.feed(2, _message(content)))
        (change,) = assembler.feed(3, Insert(relation.oid, ("1", "a", None, None, None)))
        list(assembler.feed(4, Commit(0, 100, 120, 0)))
        assert isinstance(change, RowChange)
        return change.actor

    first = actor_of(7, sign_context(TEST_KEY, 7, _GENUINE))
    # The same bytes replayed in the next transaction: signed for xid 7, not 8.
    replayed = actor_of(8, sign_context(TEST_KEY, 7, _GENUINE))
    again = actor_of(9, sign_context(TEST_KEY, 9, _GENUINE))
    assert first.origin == "application" and first.id == "ann"
    assert replayed == ActorContext(origin=FORGED)
    assert again == first
