"""Pure transaction assembly: decoded pgoutput messages in, actor-attributed row changes out."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from bookaudit.cdc.decode import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    Truncate,
    Update,
    Value,
)
from bookaudit.errors import DecodeError
from bookaudit.model import (
    CONTEXT_PREFIX,
    MOVES_PREFIX,
    NO_CONTEXT,
    OLD_ROW_PREFIX,
    ActorContext,
    Lsn,
    Row,
    RowChange,
    TableSchema,
)

# A transaction in which a context message failed its signature check: its later changes keep
# the last genuine context (so the real database facts), flagged, so that an alert can say so.
FORGED = "forged"


def _context_mac(key: bytes, xid: int, document: bytes, kind: bytes = b"context") -> bytes:
    return hmac.new(key, b"%s:%d:" % (kind, xid) + document, hashlib.sha256).hexdigest().encode()


def sign_context(key: bytes, xid: int, document: bytes) -> bytes:
    """A context message's content as bookaudit.emit_context writes it: '<hmac hex> <json>',
    signed over 'context:<32-bit xid>:<json>' so that it is good in one transaction only."""
    return _context_mac(key, xid, document) + b" " + document


def verified_context(key: bytes, xid: int, content: bytes) -> ActorContext | None:
    """The context a message carries if the source's key signed it for this transaction;
    None for anything else, which must never be trusted (any role can emit a message)."""
    return ContextVerifier(key)(xid, content)


# Distinct context documents remembered by a verifier; a session's document repeats in each of
# its transactions, so a few hundred cover the application's connection pool.
_KNOWN_CONTEXTS = 512


class ContextVerifier:
    """verified_context for one key, cheaper per transaction: the key's HMAC state is set up
    once, and a document already parsed is not parsed again (only its signature, which names
    the transaction, is checked every time)."""

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._known: dict[bytes, ActorContext] = {}

    def __call__(self, xid: int, content: bytes) -> ActorContext | None:
        mac, sep, document = content.partition(b" ")
        if not sep:
            return None
        signer = self._keyed.copy()
        signer.update(b"context:%d:" % xid)
        signer.update(document)
        if not hmac.compare_digest(mac, signer.hexdigest().encode()):
            return None
        actor = self._known.get(document)
        if actor is None:
            try:
                actor = ActorContext.from_message(document)
            except DecodeError:
                return None
            if len(self._known) >= _KNOWN_CONTEXTS:
                self._known.clear()
            self._known[document] = actor
        return actor


def sign_moves(key: bytes, xid: int, note: bytes) -> bytes:
    """A moves message's content as bookaudit.emit_moves writes it: '<hmac hex> <note>', note
    being 'begin <table oid>' or 'end <table oid>', signed over 'moves:<32-bit xid>:<note>'."""
    return _context_mac(key, xid, note, b"moves") + b" " + note


def verified_moves(key: bytes, xid: int, content: bytes) -> tuple[bool, int] | None:
    """(True for begin, False for end, the table's oid) if the source's key signed the message
    for this transaction; None for anything else."""
    mac, sep, note = content.partition(b" ")
    if not sep or not hmac.compare_digest(mac, _context_mac(key, xid, note, b"moves")):
        return None
    edge, _, oid = note.partition(b" ")
    if edge not in (b"begin", b"end") or not oid.isdigit():
        return None
    return edge == b"begin", int(oid)


def sign_old_row(key: bytes, xid: int, document: bytes) -> bytes:
    """An old-row message's content as bookaudit._emit_old_row writes it: '<hmac hex> <doc>',
    doc being '<table oid> <json object of column texts>', signed over 'old:<xid>:<doc>'."""
    return _context_mac(key, xid, document, b"old") + b" " + document


def verified_old_row(
    key: bytes, xid: int, content: bytes
) -> tuple[int, dict[str, str | None]] | None:
    """(the partitioned table's oid, its old row's column texts) if the source's key signed the
    message for this transaction; None for anything else."""
    mac, sep, document = content.partition(b" ")
    if not sep or not hmac.compare_digest(mac, _context_mac(key, xid, document, b"old")):
        return None
    oid, _, doc = document.partition(b" ")
    try:
        texts = json.loads(doc)
    except ValueError:
        return None
    if not oid.isdigit() or not isinstance(texts, dict):
        return None
    if not all(v is None or isinstance(v, str) for v in texts.values()):
        return None
    return int(oid), texts


# A tuple's values by column as pgoutput sent them: UNCHANGED_TOAST where it sent 'u'. A Mapping,
# so a rendered Row passes for one; a Row only once the gaps are filled (_fill_unchanged_toast).
RawRow = Mapping[str, Value]


@dataclass(frozen=True, slots=True)
class _Held:
    """A delete held back while a partitioned table's UPDATE runs: the first half of a move, if
    the next change is that table's insert."""

    wal_start: int
    table: TableSchema
    old: RawRow


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    """The commit of a transaction: once its changes are acknowledged, end_lsn can be confirmed."""

    xid: int
    commit_lsn: int
    end_lsn: int
    changes: int


Output = RowChange | TransactionEnd
SchemaResolver = Callable[[Relation], TableSchema]
# Column texts written in fixed settings, printed again as the capture's session (and so pgoutput)
# prints them, in the table's column order.
Renderer = Callable[[TableSchema, Mapping[str, str | None]], Row]


@dataclass
class _Open:
    begin: Begin
    actor: ActorContext = NO_CONTEXT
    forged: bool = False
    sequence: int = 0
    per_table: dict[int, int] = field(default_factory=dict)
    # Partitioned tables whose UPDATE is running (between its moves messages), and a delete of
    # one of them held back until the next message says whether it began a move.
    updating: set[int] = field(default_factory=set)
    held: _Held | None = None
    # The whole old row of the next change of a partitioned table, from a partition that lacked
    # REPLICA IDENTITY FULL (bookaudit.partition_row), by the table's oid.
    old_rows: dict[int, dict[str, str | None]] = field(default_factory=dict)


class TransactionAssembler:
    """Feeds on (wal_start, message) pairs; keeps relations and the open transaction's context.

    `resolve` turns a Relation into a TableSchema; it is the one call that may do I/O (a
    catalog lookup for the primary key and type names), injected so this class stays pure.
    `context_key` is the source's bookaudit.context_key: only context messages it signed count.
    `render` (I/O too) prints an old row's texts from an old-row message as pgoutput would.
    """

    def __init__(
        self, resolve: SchemaResolver, context_key: bytes, render: Renderer | None = None
    ) -> None:
        self._resolve = resolve
        self._verify = ContextVerifier(context_key)
        self._render = render
        self._key = context_key
        self._tables: dict[int, TableSchema] = {}
        self._open: _Open | None = None

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def feed(self, wal_start: int, message: Message) -> Iterator[Output]:
        """A row moving between partitions reaches pgoutput as a delete and an insert of the
        partitioned table, adjacent (only Relation messages may come between); inside that
        table's UPDATE (its signed moves messages) such a pair is the one update it is."""
        if isinstance(message, Relation):
            self._tables[message.oid] = self._resolve(message)
            return
        if isinstance(message, Insert) and self._open is not None and self._open.held:
            held = self._open.held
            self._open.held = None
            if held.table.oid == message.relation_oid:
                table = held.table
                yield self._change(held.wal_start, table, "u", held.old, _row(table, message.new))
                return
            yield self._change(held.wal_start, held.table, "d", held.old, None)
        elif self._open is not None and self._open.held:
            yield from self._release_held()
        if isinstance(message, Begin):
            if self._open is not None:
                raise DecodeError(f"BEGIN of xid {message.xid} inside xid {self._open.begin.xid}")
            self._open = _Open(message)
        elif isinstance(message, Commit):
            txn = self._require_open("COMMIT")
            self._open = None
            yield TransactionEnd(txn.begin.xid, message.commit_lsn, message.end_lsn, txn.sequence)
        elif isinstance(message, LogicalMessage):
            if message.prefix == CONTEXT_PREFIX:
                self._context(message)
            elif message.prefix == MOVES_PREFIX:
                self._moves(message)
            elif message.prefix == OLD_ROW_PREFIX:
                self._old_row_message(message)
        elif isinstance(message, Insert):
            table = self._table(message.relation_oid)
            yield self._change(wal_start, table, "c", None, _row(table, message.new))
        elif isinstance(message, Update):
            table = self._table(message.relation_oid)
            before = None if message.old is None else _row(table, message.old)
            after = _row(table, message.new)
            before = self._whole_old_row(table, before, after)
            yield self._change(wal_start, table, "u", before, after)
        elif isinstance(message, Delete):
            table = self._table(message.relation_oid)
            txn = self._require_open("row change")
            wal_old = _row(table, message.old)
            whole = self._whole_old_row(table, wal_old, None)
            old = wal_old if whole is None else whole
            if message.relation_oid in txn.updating:
                txn.held = _Held(wal_start, table, old)
            else:
                yield self._change(wal_start, table, "d", old, None)
        elif isinstance(message, Truncate):
            for oid in message.relation_oids:
                yield self._change(wal_start, self._table(oid), "t", None, None)

    def _context(self, message: LogicalMessage) -> None:
        """A genuine message is always transactional; a non-transactional one outside a
        transaction can only be forged, and there is no transaction to flag."""
        if not message.transactional and self._open is None:
            return
        txn = self._require_open("context message")
        actor = self._verify(txn.begin.xid, message.content) if message.transactional else None
        if actor is None:
            txn.forged = True
        else:
            txn.actor = actor

    def _release_held(self) -> Iterator[RowChange]:
        """The held delete was no move's first half: it is the delete it says."""
        txn = self._require_open("row change")
        held, txn.held = txn.held, None
        if held is not None:
            yield self._change(held.wal_start, held.table, "d", held.old, None)

    def _old_row_message(self, message: LogicalMessage) -> None:
        """A forged or non-transactional one is never used, and flags the transaction."""
        if not message.transactional and self._open is None:
            return
        txn = self._require_open("old row message")
        found = (
            verified_old_row(self._key, txn.begin.xid, message.content)
            if message.transactional
            else None
        )
        if found is None:
            txn.forged = True
        else:
            txn.old_rows[found[0]] = found[1]

    def _whole_old_row(
        self, table: TableSchema, wal_old: RawRow | None, after: RawRow | None
    ) -> RawRow | None:
        """The old row an old-row message carried for this change, else the WAL's. The message
        serves only the change whose key it holds: the WAL's old key, or the new row's key when
        the WAL kept no old row (an update that left a default-identity key alone)."""
        txn = self._require_open("row change")
        texts = txn.old_rows.pop(table.oid, None)
        if texts is None or self._render is None:
            return wal_old
        whole = self._render(table, texts)
        probe = wal_old if wal_old is not None else after
        if probe is None or not table.key or any(whole.get(k) != probe.get(k) for k in table.key):
            return wal_old
        return whole

    def _moves(self, message: LogicalMessage) -> None:
        """A forged or non-transactional moves message merges nothing and flags the transaction
        as a forged context does."""
        if not message.transactional and self._open is None:
            return
        txn = self._require_open("moves message")
        found = (
            verified_moves(self._key, txn.begin.xid, message.content)
            if message.transactional
            else None
        )
        if found is None:
            txn.forged = True
        elif found[0]:
            txn.updating.add(found[1])
        else:
            txn.updating.discard(found[1])

    def _require_open(self, what: str) -> _Open:
        if self._open is None:
            raise DecodeError(f"{what} outside a transaction")
        return self._open

    def _table(self, oid: int) -> TableSchema:
        try:
            return self._tables[oid]
        except KeyError:
            raise DecodeError(f"change for relation {oid} before its Relation message") from None

    def _change(
        self,
        lsn: int,
        table: TableSchema,
        op: str,
        raw_before: RawRow | None,
        raw_after: RawRow | None,
    ) -> RowChange:
        txn = self._require_open("row change")
        toast: tuple[str, ...] = ()
        after: Row | None = None
        if raw_after is not None:
            after, toast = _fill_unchanged_toast(raw_after, raw_before)
        before: Row | None = None
        if raw_before is not None:
            # A key-only or default-identity old tuple leaves UNCHANGED_TOAST-like gaps as None.
            before = {k: _text(v) for k, v in raw_before.items()}
        order = txn.per_table.get(table.oid, 0)
        txn.per_table[table.oid] = order + 1
        change = RowChange(
            table=table,
            op=op,
            before=before,
            after=after,
            xid=txn.begin.xid,
            commit_position=Lsn(txn.begin.final_lsn),
            position=Lsn(lsn),
            sequence=txn.sequence,
            data_collection_order=order,
            commit_unix_ms=txn.begin.commit_unix_ms,
            actor=replace(txn.actor, origin=FORGED) if txn.forged else txn.actor,
            unchanged_toast=toast,
        )
        txn.sequence += 1
        return change


def _row(table: TableSchema, values: tuple[Value, ...]) -> RawRow:
    if len(values) != len(table.columns):
        raise DecodeError(
            f"{table.schema}.{table.name}: tuple has {len(values)} values for "
            f"{len(table.columns)} columns"
        )
    return dict(zip(table.columns, values, strict=True))


def _text(value: Value) -> str | None:
    """A column's text; None for SQL NULL and for UNCHANGED_TOAST, the only other values."""
    return value if isinstance(value, str) else None


def _fill_unchanged_toast(after: RawRow, before: RawRow | None) -> tuple[Row, tuple[str, ...]]:
    """pgoutput sends 'u' for an unchanged TOASTed value; REPLICA IDENTITY FULL gives us the old
    one, so the new row stays complete instead of silently losing the column."""
    filled: Row = {}
    unknown: list[str] = []
    for column, value in after.items():
        if value is UNCHANGED_TOAST:
            value = UNCHANGED_TOAST if before is None else before.get(column, UNCHANGED_TOAST)
            if value is UNCHANGED_TOAST:
                unknown.append(column)
        filled[column] = _text(value)
    return filled, tuple(unknown)
