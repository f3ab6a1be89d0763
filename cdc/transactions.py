"""Pure transaction assembly: decoded pgoutput messages in, actor-attributed row changes out."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
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
    NO_CONTEXT,
    ActorContext,
    Lsn,
    Row,
    RowChange,
    TableSchema,
)

# A transaction in which a context message failed its signature check: its later changes keep
# the last genuine context (so the real database facts), flagged, so that an alert can say so.
FORGED = "forged"


def _context_mac(key: bytes, xid: int, document: bytes) -> bytes:
    return hmac.new(key, b"context:%d:" % xid + document, hashlib.sha256).hexdigest().encode()


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


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    """The commit of a transaction: once its changes are acknowledged, end_lsn can be confirmed."""

    xid: int
    commit_lsn: int
    end_lsn: int
    changes: int


Output = RowChange | TransactionEnd
SchemaResolver = Callable[[Relation], TableSchema]


@dataclass
class _Open:
    begin: Begin
    actor: ActorContext = NO_CONTEXT
    forged: bool = False
    sequence: int = 0
    per_table: dict[int, int] = field(default_factory=dict)


class TransactionAssembler:
    """Feeds on (wal_start, message) pairs; keeps relations and the open transaction's context.

    `resolve` turns a Relation into a TableSchema; it is the one call that may do I/O (a
    catalog lookup for the primary key and type names), injected so this class stays pure.
    `context_key` is the source's bookaudit.context_key: only context messages it signed count.
    """

    def __init__(self, resolve: SchemaResolver, context_key: bytes) -> None:
        self._resolve = resolve
        self._verify = ContextVerifier(context_key)
        self._tables: dict[int, TableSchema] = {}
        self._open: _Open | None = None

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def feed(self, wal_start: int, message: Message) -> Iterator[Output]:
        if isinstance(message, Relation):
            self._tables[message.oid] = self._resolve(message)
        elif isinstance(message, Begin):
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
        elif isinstance(message, Insert):
            table = self._table(message.relation_oid)
            yield self._change(wal_start, table, "c", None, _row(table, message.new))
        elif isinstance(message, Update):
            table = self._table(message.relation_oid)
            before = None if message.old is None else _row(table, message.old)
            after = _row(table, message.new)
            yield self._change(wal_start, table, "u", before, after)
        elif isinstance(message, Delete):
            table = self._table(message.relation_oid)
            yield self._change(wal_start, table, "d", _row(table, message.old), None)
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
        self, lsn: int, table: TableSchema, op: str, before: Row | None, after: Row | None
    ) -> RowChange:
        txn = self._require_open("row change")
        toast: tuple[str, ...] = ()
        if after is not None:
            after, toast = _fill_unchanged_toast(after, before)
        if before is not None:
            # A key-only or default-identity old tuple leaves UNCHANGED_TOAST-like gaps as None.
            before = {k: (None if v is UNCHANGED_TOAST else v) for k, v in before.items()}
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


def _row(table: TableSchema, values: tuple[Value, ...]) -> Row:
    if len(values) != len(table.columns):
        raise DecodeError(
            f"{table.schema}.{table.name}: tuple has {len(values)} values for "
            f"{len(table.columns)} columns"
        )
    return dict(zip(table.columns, values, strict=True))  # type: ignore[arg-type]


def _fill_unchanged_toast(after: Row, before: Row | None) -> tuple[Row, tuple[str, ...]]:
    """pgoutput sends 'u' for an unchanged TOASTed value; REPLICA IDENTITY FULL gives us the old
    one, so the new row stays complete instead of silently losing the column."""
    missing = [k for k, v in after.items() if v is UNCHANGED_TOAST]
    if not missing:
        return after, ()
    filled = dict(after)
    unknown = []
    for column in missing:
        old: object = UNCHANGED_TOAST if before is None else before.get(column, UNCHANGED_TOAST)
        if old is UNCHANGED_TOAST:
            filled[column] = None
            unknown.append(column)
        else:
            filled[column] = old  # type: ignore[assignment]
    return filled, tuple(unknown)
