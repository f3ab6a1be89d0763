"""Partitioned tables in the assembler: a row moving between partitions is one update, and the old
row of a partition without REPLICA IDENTITY FULL comes from the signed old-row message."""

from __future__ import annotations

import json
from collections.abc import Mapping

from bookaudit.cdc.decode import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    Update,
)
from bookaudit.cdc.transactions import (
    FORGED,
    TransactionAssembler,
    TransactionEnd,
    sign_moves,
    sign_old_row,
)
from bookaudit.model import MOVES_PREFIX, OLD_ROW_PREFIX, Row, RowChange, TableSchema

XID = 41
KEY = bytes(range(32))
ROOT = 7001
# What pgoutput sends, publishing via the root: the partitioned table's relation; a partition's
# own relation comes beside it, and never names a change.
BOOKINGS = Relation(
    ROOT,
    "public",
    "bookings",
    "f",
    (
        Column(True, "id", 20, -1),
        Column(True, "starts", 1184, -1),
        Column(True, "note", 25, -1),
    ),
)
PARTITION = Relation(7002, "public", "bookings_2027q2", "d", BOOKINGS.columns)
OLD = ("5", "2027-01-02 10:00:00+00", "gate code")
NEW = ("5", "2027-05-02 10:00:00+00", "gate code")


def resolve(relation: Relation) -> TableSchema:
    return TableSchema(
        oid=relation.oid,
        schema=relation.namespace,
        name=relation.name,
        columns=tuple(c.name for c in relation.columns),
        types=("bigint", "timestamp with time zone", "text"),
        key=("id", "starts"),
    )


def render(table: TableSchema, texts: Mapping[str, str | None]) -> Row:
    """Stands in for the capture session's printing (these texts are in its form already),
    in the table's column order, a column the message lacks as NULL."""
    return {c: texts.get(c) for c in table.columns}


def moves(edge: str, oid: int = ROOT, key: bytes = KEY) -> LogicalMessage:
    note = f"{edge} {oid}".encode()
    return LogicalMessage(True, 0, MOVES_PREFIX, sign_moves(key, XID, note))


def old_row(texts: Mapping[str, str | None], key: bytes = KEY) -> LogicalMessage:
    document = f"{ROOT} ".encode() + json.dumps(texts).encode()
    return LogicalMessage(True, 0, OLD_ROW_PREFIX, sign_old_row(key, XID, document))


def run(*messages: Message) -> list[RowChange]:
    assembler = TransactionAssembler(resolve, KEY, render)
    fed: list[Message] = [BOOKINGS, Begin(900, 0, XID), *messages, Commit(0, 900, 950, 0)]
    out = [o for lsn, m in enumerate(fed) for o in assembler.feed(100 + lsn, m)]
    end = out.pop()
    assert isinstance(end, TransactionEnd) and end.changes == len(out)
    assert all(isinstance(o, RowChange) for o in out)
    return [o for o in out if isinstance(o, RowChange)]


def ops(changes: list[RowChange]) -> list[tuple[str, str | None, str | None]]:
    return [
        (
            c.op,
            None if c.before is None else c.before["starts"],
            None if c.after is None else c.after["starts"],
        )
        for c in changes
    ]


def test_a_move_inside_the_tables_update_is_one_update() -> None:
    (change,) = run(
        moves("begin"),
        Delete(ROOT, OLD, False),
        PARTITION,  # pgoutput names the partition that takes the row; it changes nothing
        Insert(ROOT, NEW),
        moves("end"),
    )
    assert (change.op, change.table.name) == ("u", "bookings")
    assert change.before == dict(zip(("id", "starts", "note"), OLD, strict=True))
    assert change.after == dict(zip(("id", "starts", "note"), NEW, strict=True))
    assert (change.sequence, change.data_collection_order) == (0, 0)


def test_several_moves_and_an_in_place_update_in_one_statement() -> None:
    other_old = ("6", "2027-02-01 09:00:00+00", None)
    other_new = ("6", "2027-08-01 09:00:00+00", None)
    changes = run(
        moves("begin"),
        Delete(ROOT, OLD, False),
        Insert(ROOT, NEW),
        Update(ROOT, ("7", "2027-01-03 08:00:00+00", None), False,
               ("7", "2027-01-04 08:00:00+00", None)),
        Delete(ROOT, other_old, False),
        Insert(ROOT, other_new),
        moves("end"),
    )  # fmt: skip
    assert ops(changes) == [
        ("u", OLD[1], NEW[1]),
        ("u", "2027-01-03 08:00:00+00", "2027-01-04 08:00:00+00"),
        ("u", other_old[1], other_new[1]),
    ]
    assert [c.sequence for c in changes] == [0, 1, 2]


def test_the_applications_own_delete_and_insert_stay_two_changes() -> None:
    assert ops(run(Delete(ROOT, OLD, False), Insert(ROOT, NEW))) == [
        ("d", OLD[1], None),
        ("c", None, NEW[1]),
    ]
    # After the UPDATE's end, a delete and an insert are the application's again.
    assert ops(run(moves("begin"), moves("end"), Delete(ROOT, OLD, False), Insert(ROOT, NEW))) == [
        ("d", OLD[1], None),
        ("c", None, NEW[1]),
    ]


def test_a_held_delete_not_followed_by_an_insert_is_a_delete() -> None:
    at_commit = run(moves("begin"), Delete(ROOT, OLD, False))
    assert ops(at_commit) == [("d", OLD[1], None)]
    before_another = run(moves("begin"), Delete(ROOT, OLD, False), Delete(ROOT, NEW, False))
    assert ops(before_another) == [("d", OLD[1], None), ("d", NEW[1], None)]


def test_forged_moves_merge_nothing_and_flag_the_transaction() -> None:
    changes = run(moves("begin", key=b"\x01" * 32), Delete(ROOT, OLD, False), Insert(ROOT, NEW))
    assert [c.op for c in changes] == ["d", "c"]
    assert all(c.actor.origin == FORGED for c in changes)


def test_an_old_row_message_completes_a_key_only_old_row() -> None:
    texts = dict(zip(("id", "starts", "note"), OLD, strict=True))
    # An update that kept the key: under the default identity the WAL has no old row at all.
    kept = ("5", OLD[1], "new code")
    (update,) = run(old_row(texts), Update(ROOT, None, False, kept))
    assert update.before == texts
    # A delete: the WAL has the key, and nulls for the rest.
    (delete,) = run(old_row(texts), Delete(ROOT, ("5", OLD[1], None), True))
    assert delete.before == texts


def test_an_old_row_message_serves_only_its_own_row() -> None:
    texts = {"id": "99", "starts": OLD[1], "note": "someone else"}
    (delete,) = run(old_row(texts), Delete(ROOT, ("5", OLD[1], None), True))
    assert delete.before == {"id": "5", "starts": OLD[1], "note": None}
    forged = run(old_row(dict(zip(("id", "starts", "note"), OLD, strict=True)), key=b"\x02" * 32),
                 Delete(ROOT, ("5", OLD[1], None), True))  # fmt: skip
    assert forged[0].before == {"id": "5", "starts": OLD[1], "note": None}
    assert forged[0].actor.origin == FORGED
