"""The concepts every stage shares: positions, the actor context, table schemas and row changes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NewType

from bookaudit.errors import DecodeError

# --- names the source install and the capture agree on --------------------------------------

# The prefix of the transactional logical message the context trigger emits.
CONTEXT_PREFIX = "bookaudit.context"
# The prefix of the messages that bracket an UPDATE of a partitioned table (bookaudit.emit_moves).
MOVES_PREFIX = "bookaudit.moves"
# The prefix of the message holding a whole old row the WAL lacks (bookaudit.partition_row).
OLD_ROW_PREFIX = "bookaudit.old"
# Named to sort first: AFTER triggers fire in name order, and the outbox row must be written
# before an RI cascade ("RI_ConstraintTrigger_...") or the application's own triggers change
# other rows, so that the outbox order is the order in which the WAL records the changes.
OUTBOX_TRIGGER = "0_bookaudit_outbox"
# The column of a staged baseline copy (bookaudit.baseline_<n>) that numbers its rows in key
# order from 1; the install refuses a table that already has a column by this name.
BASELINE_SEQ_COLUMN = "_bookaudit_baseline_seq"

# --- positions --------------------------------------------------------------------------------

Lsn = NewType("Lsn", int)
"""A WAL location: where logical mode's changes and commits sit."""

CommitSeq = NewType("CommitSeq", int)
"""bookaudit.outbox_commits.commit_seq: trigger mode's commit number, which is not an LSN."""

Position = Lsn | CommitSeq
"""A place in one source's commit order. An int from decode to the warehouse; only SQL, JSON
and the terminal see it formatted (`format_position`), as pg_lsn text in both modes so that
one warehouse column orders both."""


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> Lsn:
    try:
        high, low = text.split("/")
        return Lsn((int(high, 16) << 32) | int(low, 16))
    except ValueError:
        raise DecodeError(f"not an LSN: {text!r}") from None


def format_position(position: Position) -> str:
    """The pg_lsn text the warehouse stores for either kind of position."""
    return format_lsn(position)


def parse_position(text: str) -> Position:
    return parse_lsn(text)


# --- who acted --------------------------------------------------------------------------------


def actor_label(actor_id: str | None, db_user: str | None, application: str | None) -> str:
    """The application user, else the database role and client program.

    The SQL twin is audit.actor_label (sql/warehouse/001_audit.sql); a contract test keeps them
    equal."""
    if actor_id:
        return actor_id
    via = f" via {application}" if application else ""
    return f"{db_user or 'unknown'} (db role{via})"


def actor_identity(actor_id: str | None, db_user: str | None) -> str:
    """Who a change counts as when changes are grouped by person: the application user, else
    the database role. The SQL twin is audit.actor_identity."""
    return actor_id or db_user or "unknown"


@dataclass(frozen=True, slots=True)
class ActorContext:
    """Who acted: the application's user when it said so, always the database session's facts."""

    origin: str
    id: str | None = None
    role: str | None = None
    reason: str | None = None
    approval_ref: str | None = None
    request_id: str | None = None
    application: str | None = None
    db_user: str | None = None
    client_addr: str | None = None

    @classmethod
    def from_message(cls, content: bytes) -> ActorContext:
        try:
            doc = json.loads(content)
        except ValueError as exc:
            raise DecodeError(f"bookaudit.context message is not JSON: {exc}", content) from None
        if not isinstance(doc, dict):
            raise DecodeError("bookaudit.context message is not a JSON object", content)

        def text(key: str) -> str | None:
            value = doc.get(key)
            return None if value in (None, "") else str(value)

        return cls(
            origin=text("origin") or "application",
            id=text("actor"),
            role=text("role"),
            reason=text("reason"),
            approval_ref=text("approval_ref"),
            request_id=text("request_id"),
            application=text("application"),
            db_user=text("db_user"),
            client_addr=text("client_addr"),
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ActorContext:
        """From the envelope's `actor` record (or an audit row's actor columns)."""
        return cls(
            origin=str(raw.get("origin") or "missing"),
            id=raw.get("id"),
            role=raw.get("role"),
            reason=raw.get("reason"),
            approval_ref=raw.get("approval_ref"),
            request_id=raw.get("request_id"),
            application=raw.get("application"),
            db_user=raw.get("db_user"),
            client_addr=raw.get("client_addr"),
        )

    def to_dict(self) -> dict[str, str | None]:
        """The envelope's `actor` record."""
        return {
            "id": self.id,
            "role": self.role,
            "reason": self.reason,
            "approval_ref": self.approval_ref,
            "request_id": self.request_id,
            "application": self.application,
            "db_user": self.db_user,
            "client_addr": self.client_addr,
            "origin": self.origin,
        }

    @property
    def display(self) -> str:
        """The label people read (alerts, reports, audit views)."""
        return actor_label(self.id, self.db_user, self.application)

    @property
    def identity(self) -> str:
        """The person a change counts as: compare this, never the display label."""
        return actor_identity(self.id, self.db_user)


# Changes that reach the capture without a context (a table audited without the trigger, or
# changes written before the install) still say so instead of pretending to know.
NO_CONTEXT = ActorContext(origin="missing")

# A baseline row (op r) was written by nobody the audit saw: it is the row as it stood when the
# audit started. The label stands in the actor's place so that every reader shows it as such;
# origin "baseline" is what tells it apart from an application user.
BASELINE_LABEL = "(existing at install)"
BASELINE = ActorContext(origin="baseline", id=BASELINE_LABEL)

# --- tables and row changes -------------------------------------------------------------------

Row = dict[str, str | None]


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A relation as the capture needs it: column names and types, and its real primary key."""

    oid: int
    schema: str
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RowChange:
    """One committed row change with everything the envelope needs.

    `commit_position` orders transactions on their source and `sequence` orders changes inside
    one; `position` is where the change itself sits (in trigger mode, its commit's number)."""

    table: TableSchema
    op: str  # c, u, d or t (truncate)
    before: Row | None
    after: Row | None
    xid: int
    commit_position: Position
    position: Position
    sequence: int
    data_collection_order: int
    commit_unix_ms: int
    actor: ActorContext
    unchanged_toast: tuple[str, ...] = ()
    # Debezium's source.snapshot: "false" for a streamed change; "true", or "last" on the final
    # one, for a row recorded as it existed when the audit started (op "r").
    snapshot: str = "false"


# --- the envelope -----------------------------------------------------------------------------

OPS = ("c", "u", "d", "t", "r")
MODES = ("logical", "trigger")


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where a capture's changes come from, as every envelope's `source` block names it."""

    name: str
    db: str
    mode: str = "logical"
    # '<system identifier>/<database name>': tells apart two sources given the same name, which
    # the warehouse refuses to mix (consumers/sources.py).
    identity: str = ""


@dataclass(frozen=True, slots=True)
class Column:
    """One column as the envelope describes it: name, PostgreSQL type, part of the primary key."""

    name: str
    type: str
    key: bool


@dataclass(frozen=True, slots=True)
class EnvelopeSource:
    """The envelope's `source` block. Avro keeps Debezium's names (`txId`, `lsn`, `commit_lsn`);
    here they are `txid`, `position` and `commit_position`, a CommitSeq when mode is trigger."""

    version: str
    connector: str
    name: str
    db: str
    schema: str
    table: str
    txid: int
    position: Position
    commit_position: Position
    sequence: int
    ts_ms: int
    snapshot: str
    mode: str


@dataclass(frozen=True, slots=True)
class EnvelopeTransaction:
    """Debezium's `transaction` block: orders are counted from 1."""

    id: str
    total_order: int
    data_collection_order: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """One change event as a consumer reads it: typed, with the row's real primary key."""

    before: Row | None
    after: Row | None
    source: EnvelopeSource
    op: str
    ts_ms: int
    transaction: EnvelopeTransaction | None
    actor: ActorContext
    columns: tuple[Column, ...]
    unchanged_toast: tuple[str, ...]

    @property
    def column_order(self) -> list[str]:
        """The table's column order, else the row's own (an envelope may list no columns)."""
        return [c.name for c in self.columns] or list((self.after or self.before or {}).keys())
