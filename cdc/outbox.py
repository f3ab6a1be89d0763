"""Pure trigger-mode mapping: outbox rows of one committed transaction in, RowChanges out.

The relay (relay.py) reads `bookaudit.outbox` rows in commit order; this module turns them into
the very RowChange the logical assembler yields, so the envelope, topics and warehouse rows are
the same in both modes. Where logical mode has the commit LSN, trigger mode has its commit number (CommitSeq).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bookaudit.errors import DecodeError
from bookaudit.model import NO_CONTEXT, ActorContext, CommitSeq, Row, RowChange, TableSchema

OPS = frozenset("cudt")
XID_MASK = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class OutboxCommit:
    """One row of bookaudit.outbox_commits: a committed transaction, numbered in commit order."""

    commit_seq: CommitSeq
    txid: int
    changes: int
    committed_unix_ms: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One row of bookaudit.outbox; old/new are hstore_to_array's flat [k1, v1, k2, v2, ...]."""

    txid: int
    seq: int
    context_seq: int
    schema: str
    table: str
    op: str
    old: Sequence[str | None] | None
    new: Sequence[str | None] | None
    context: str | None = None  # the actor context JSON, on the first change it covers
    shape: int | None = None  # the table's columns when written (bookaudit.outbox_shapes)


def pairs_to_row(flat: Sequence[str | None] | None, table: TableSchema) -> Row | None:
    """Values in the table's column order; a column the row did not carry reads as NULL."""
    if flat is None:
        return None
    if len(flat) % 2:
        raise DecodeError(f"{table.schema}.{table.name}: odd hstore array of {len(flat)} items")
    values: dict[str, str | None] = {}
    for i in range(0, len(flat), 2):
        key = flat[i]
        if key is None:
            raise DecodeError(f"{table.schema}.{table.name}: hstore with a NULL key")
        values[key] = flat[i + 1]
    return {c: values.get(c) for c in table.columns}


@dataclass
class OutboxTransaction:
    """Maps one committed transaction's rows, page by page, keeping per-table order across pages."""

    commit: OutboxCommit
    contexts: dict[int, ActorContext] = field(default_factory=dict)
    per_table: dict[tuple[str, str], int] = field(default_factory=dict)

    def change(self, row: OutboxRow, table: TableSchema) -> RowChange:
        """Rows must come in seq order, so a context is seen before the changes it covers."""
        if row.txid != self.commit.txid:
            raise DecodeError(f"outbox row of txid {row.txid} fed to txid {self.commit.txid}")
        if row.op not in OPS:
            raise DecodeError(f"outbox row {row.txid}/{row.seq}: unknown op {row.op!r}")
        if row.context is not None:
            self.contexts[row.seq] = ActorContext.from_message(row.context.encode())
        name = (row.schema, row.table)
        order = self.per_table.get(name, 0)
        self.per_table[name] = order + 1
        # An update begun by a move's delete that no insert completed (sql/source/002_outbox.sql)
        # is the delete it was.
        op = "d" if row.op == "u" and row.new is None else row.op
        return RowChange(
            table=table,
            op=op,
            before=pairs_to_row(row.old, table),
            after=pairs_to_row(row.new, table),
            # The 32-bit xid, as logical decoding reports the same transaction.
            xid=row.txid & XID_MASK,
            commit_position=self.commit.commit_seq,
            position=self.commit.commit_seq,
            sequence=row.seq,
            data_collection_order=order,
            commit_unix_ms=self.commit.committed_unix_ms,
            actor=self.contexts.get(row.context_seq, NO_CONTEXT),
        )
