"""Sample data the cdc and consumer tests share: pgoutput messages captured from a real
PostgreSQL 15 server (see the JSON's header), the changes they assemble into, and a row change
of a composite-key table with its variants."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bookaudit.cdc.decode import Begin, LogicalMessage, Message, Relation, decode_message
from bookaudit.cdc.transactions import TransactionAssembler, sign_context
from bookaudit.model import (
    CONTEXT_PREFIX,
    ActorContext,
    Lsn,
    RowChange,
    SourceInfo,
    TableSchema,
    parse_lsn,
)

DATA = Path(__file__).parent / "data" / "pgoutput_session.json"
# Stands in for a source's bookaudit.context_key in tests that assemble transactions.
TEST_KEY = bytes(range(32))


def captured() -> list[tuple[int, bytes]]:
    doc = json.loads(DATA.read_text())
    return [(parse_lsn(m["lsn"]), bytes.fromhex(m["hex"])) for m in doc["messages"]]


def decoded() -> list[tuple[int, Message]]:
    return [(lsn, decode_message(raw)) for lsn, raw in captured()]


def signed() -> list[tuple[int, Message]]:
    """The captured session with each context message signed by TEST_KEY for its transaction,
    as the installed emit_context signs it (the capture predates signing)."""
    out: list[tuple[int, Message]] = []
    xid = 0
    for lsn, message in decoded():
        if isinstance(message, Begin):
            xid = message.xid
        elif isinstance(message, LogicalMessage) and message.prefix == CONTEXT_PREFIX:
            message = replace(message, content=sign_context(TEST_KEY, xid, message.content))
        out.append((lsn, message))
    return out


def resolve(relation: Relation) -> TableSchema:
    return TableSchema(
        oid=relation.oid,
        schema=relation.namespace,
        name=relation.name,
        columns=tuple(c.name for c in relation.columns),
        types=tuple(str(c.type_oid) for c in relation.columns),
        key=("id",),
    )


TABLE = TableSchema(
    oid=1,
    schema="public",
    name="booking_lines",
    columns=("booking_id", "line_no", "price", "memo"),
    types=("bigint", "integer", "numeric(12,2)", "text"),
    key=("booking_id", "line_no"),
)


def change(op: str = "u") -> RowChange:
    return RowChange(
        table=TABLE,
        op=op,
        before={"booking_id": "7", "line_no": "2", "price": "0.10", "memo": None},
        after={"booking_id": "7", "line_no": "2", "price": "12345678901.23", "memo": "ünïcode"},
        xid=901,
        commit_position=Lsn(0x1_0000_0000),
        position=Lsn(0xFFFF_FF00),
        sequence=4,
        data_collection_order=1,
        commit_unix_ms=1_795_000_000_123,
        actor=ActorContext(origin="application", id="alice", role="admin", approval_ref="APR-1"),
    )


def captured_changes() -> list[RowChange]:
    assembler = TransactionAssembler(resolve, TEST_KEY)
    return [o for lsn, m in signed() for o in assembler.feed(lsn, m) if isinstance(o, RowChange)]


SOURCE = SourceInfo("bookings", "db")
NOW_MS = 1_795_000_000_000
NO_ACTOR = ActorContext(origin="db_session")


def variants() -> list[RowChange]:
    base = change()
    mutations: tuple[Callable[[RowChange], RowChange], ...] = (
        lambda c: replace(c, before=None),
        lambda c: replace(c, after=None, before=None, op="t"),
        lambda c: replace(c, after={}, before={"x": None}),
        lambda c: replace(c, data_collection_order=4096, sequence=2**40),
        lambda c: replace(c, unchanged_toast=("body", "blob")),
        lambda c: replace(c, table=replace(c.table, columns=(), types=(), key=())),
        lambda c: replace(c, xid=2**63 - 1, position=Lsn(0), commit_position=Lsn(2**40)),
        lambda c: replace(c, sequence=512, commit_unix_ms=-1),
        lambda c: replace(c, actor=NO_ACTOR),
        lambda c: replace(
            c, after={**(c.after or {}), "memo": "ünïcödé ✓ " * 40, "price": "-0.00"}
        ),
    )
    return [base, *(mutate(base) for mutate in mutations)]
