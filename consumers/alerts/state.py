"""Warehouse edge of the alerting job: its memory of changes, the alerts table and the outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from bookaudit.classify import pg_connect_error, pg_error
from bookaudit.consumers.alerts.model import (
    Alert,
    ChangeEvent,
    InvoiceSent,
    Watched,
    alert_document,
    decimal_or_none,
)
from bookaudit.consumers.alerts.rules import RuleContext
from bookaudit.consumers.records import Record
from bookaudit.errors import TerminalError, TransientError
from bookaudit.kafka.alert import in_schema_order
from bookaudit.model import format_position

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class RecordedAlert:
    """An alert as the warehouse holds it: its row id and the document every output sends."""

    id: int
    document: dict[str, Any]  # alert.avsc record, recorded_at_ms included

    @property
    def alert_id(self) -> str:
        return str(self.document["alert_id"])

    @property
    def booking_id(self) -> str | None:
        value = self.document.get("booking_id")
        return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox entry not yet delivered, with the instance that owns its delivery."""

    alert: RecordedAlert
    owner: str
    recorded_at_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    alert: int
    target: str
    attempts: int
    kafka_partition: int | None = None
    kafka_offset: int | None = None
    http_status: int | None = None


# Serialises the after-invoice check between consumer instances that read the invoice and the
# change on different partitions: each transaction locks the bookings it touches, in order. The
# bookings are hashed into a fixed number of buckets so a large batch cannot exhaust the lock
# table; two bookings sharing a bucket only wait for each other.
LOCK_BUCKETS = 1024
_LOCK_BOOKINGS = """
SELECT pg_advisory_xact_lock(hashtext('bookaudit.alerts.booking'), b)
FROM (SELECT DISTINCT ((hashtextextended(k, 0) %% n + n) %% n)::int AS b
      FROM unnest(%s::text[]) AS k, (SELECT %s::bigint AS n) c) s
ORDER BY b
"""

_REMEMBER = """
INSERT INTO audit.alert_context
    (source, commit_lsn, sequence, kind, booking_id, actor, committed_at, event)
SELECT source, commit_lsn::pg_lsn, sequence, kind, booking_id, actor,
       to_timestamp(committed_at_ms / 1000.0), event
FROM jsonb_to_recordset(%s::jsonb) AS x(
    source text, commit_lsn text, sequence bigint, kind text, booking_id text, actor text,
    committed_at_ms bigint, event jsonb)
ON CONFLICT DO NOTHING
"""

# For each change: the first invoice sent in an earlier transaction, and the same actor's earlier
# edits of the booking inside the window (a second of slack; the rule applies the exact window).
_CONTEXT = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(input)s::jsonb) AS x(
        idx int, source text, commit_lsn text, sequence bigint, booking_id text, actor text,
        committed_at_ms bigint)
)
SELECT i.idx, 'invoice', inv.event
FROM input i
CROSS JOIN LATERAL (
    SELECT c.event FROM audit.alert_context c
    WHERE c.kind = 'invoice_sent' AND c.source = i.source AND c.booking_id = i.booking_id
      AND c.commit_lsn < i.commit_lsn::pg_lsn
    ORDER BY c.commit_lsn, c.sequence
    LIMIT 1
) inv
WHERE %(invoices)s
UNION ALL
SELECT i.idx, 'edit', e.event
FROM input i
JOIN audit.alert_context e
  ON e.kind = 'edit' AND e.source = i.source AND e.booking_id = i.booking_id
 AND e.actor = i.actor
 AND (e.commit_lsn, e.sequence) < (i.commit_lsn::pg_lsn, i.sequence)
 AND e.committed_at >= to_timestamp(i.committed_at_ms / 1000.0)
                       - make_interval(mins => %(window)s::int, secs => 1)
WHERE %(window)s::int > 0
"""

# Changes committed after a newly seen sent invoice that have no after-invoice alert yet.
_LATER = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%s::jsonb) AS x(
        idx int, source text, commit_lsn text, booking_id text)
)
SELECT i.idx, e.event
FROM input i
JOIN audit.alert_context e
  ON e.kind = 'edit' AND e.source = i.source AND e.booking_id = i.booking_id
 AND e.commit_lsn > i.commit_lsn::pg_lsn
WHERE NOT EXISTS (
    SELECT 1 FROM audit.alerts a
    WHERE a.source = e.source AND a.commit_lsn = e.commit_lsn AND a.sequence = e.sequence
      AND a.kind = 'after_invoice_sent')
ORDER BY i.idx, e.commit_lsn, e.sequence
"""

_RECORD = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(alerts)s::jsonb) AS x(
        alert_id text, rule text, kind text, severity text, message text, source text,
        commit_lsn text, sequence bigint, txid bigint, committed_at_ms bigint, table_name text,
        booking_id text, actor text, actor_role text, approval_ref text, old_price numeric,
        new_price numeric, change_pct numeric, document jsonb)
),
inserted AS (
    INSERT INTO audit.alerts (
        alert_id, rule, kind, severity, message, source, commit_lsn, sequence, txid,
        committed_at, table_name, booking_id, actor, actor_role, approval_ref, old_price,
        new_price, change_pct, document)
    SELECT alert_id, rule, kind, severity, message, source, commit_lsn::pg_lsn, sequence, txid,
           to_timestamp(committed_at_ms / 1000.0), table_name, booking_id, actor, actor_role,
           approval_ref, old_price, new_price, change_pct, document
    FROM input
    ON CONFLICT DO NOTHING
    RETURNING id, document, recorded_at
),
outbox AS (
    INSERT INTO audit.alert_outbox (alert, channel, owner)
    SELECT i.id, c.channel, %(owner)s FROM inserted i, unnest(%(channels)s::text[]) AS c(channel)
)
SELECT id, document, (extract(epoch FROM recorded_at) * 1000)::bigint FROM inserted ORDER BY id
"""

_DEAD_LETTER = """
INSERT INTO audit.dead_letters (kafka_topic, kafka_partition, kafka_offset, key, value, error)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING
"""

_PENDING = """
SELECT o.alert, o.owner, a.document, (extract(epoch FROM a.recorded_at) * 1000)::bigint
FROM audit.alert_outbox o
JOIN audit.alerts a ON a.id = o.alert
WHERE o.channel = %(channel)s AND o.owner <> %(me)s
  AND NOT EXISTS (
      SELECT 1 FROM audit.alert_deliveries d WHERE d.alert = o.alert AND d.channel = o.channel)
ORDER BY o.alert
"""

_DELIVERED = """
INSERT INTO audit.alert_deliveries
    (alert, channel, target, kafka_partition, kafka_offset, http_status, attempts)
SELECT alert, %(channel)s, target, kafka_partition, kafka_offset, http_status, attempts
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
    alert bigint, target text, kafka_partition int, kafka_offset bigint, http_status int,
    attempts int)
ON CONFLICT DO NOTHING
"""


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _num(value: str | None) -> str | None:
    number = decimal_or_none(value)
    return None if number is None else str(number)


def _alert_row(alert: Alert) -> dict[str, Any]:
    e = alert.event
    doc = alert_document(alert)
    pct: Decimal | None = alert.change_pct
    return {
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "source": e.source,
        "commit_lsn": format_position(e.commit_position),
        "sequence": e.sequence,
        "txid": e.txid,
        "committed_at_ms": e.committed_at_ms,
        "table_name": e.table,
        "booking_id": e.booking_id,
        "actor": e.actor.display,
        "actor_role": e.actor.role,
        "approval_ref": e.actor.approval_ref,
        "old_price": _num(e.old_price),
        "new_price": _num(e.new_price),
        "change_pct": None if pct is None else str(pct),
        "document": doc,
    }


def _recorded(row_id: int, document: dict[str, Any], recorded_at_ms: int) -> RecordedAlert:
    return RecordedAlert(
        int(row_id), in_schema_order({**document, "recorded_at_ms": int(recorded_at_ms)})
    )


class BatchTransaction:
    """The statements of one batch's warehouse transaction, in the order the job runs them."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def lock_bookings(self, keys: Sequence[str]) -> None:
        if keys:
            self._conn.execute(_LOCK_BOOKINGS, (list(keys), LOCK_BUCKETS))

    def remember(self, watched: Sequence[Watched]) -> None:
        """Every watched change and sent invoice that names a booking, once (replays skip)."""
        rows = [
            {
                "source": w.source,
                "commit_lsn": format_position(w.commit_position),
                "sequence": w.sequence,
                "kind": "edit" if isinstance(w, ChangeEvent) else "invoice_sent",
                "booking_id": w.booking_id,
                "actor": w.actor.display if isinstance(w, ChangeEvent) else None,
                "committed_at_ms": w.committed_at_ms,
                "event": w.to_json(),
            }
            for w in watched
            if w.booking_id is not None
        ]
        if rows:
            self._conn.execute(_REMEMBER, (_json(rows),))

    def contexts(
        self, changes: Sequence[ChangeEvent], *, invoices: bool, window_minutes: int
    ) -> list[RuleContext]:
        """The context of each change, as of everything remembered so far (this batch included)."""
        found_invoice: dict[int, InvoiceSent] = {}
        found_edits: dict[int, list[ChangeEvent]] = {}
        wanted = [(i, c) for i, c in enumerate(changes) if c.booking_id is not None]
        if wanted and (invoices or window_minutes > 0):
            payload = [
                {
                    "idx": i,
                    "source": c.source,
                    "commit_lsn": format_position(c.commit_position),
                    "sequence": c.sequence,
                    "booking_id": c.booking_id,
                    "actor": c.actor.display,
                    "committed_at_ms": c.committed_at_ms,
                }
                for i, c in wanted
            ]
            params = {"input": _json(payload), "invoices": invoices, "window": window_minutes}
            for idx, what, event in self._conn.execute(_CONTEXT, params):
                if what == "invoice":
                    found_invoice[idx] = InvoiceSent.from_json(event)
                else:
                    found_edits.setdefault(idx, []).append(ChangeEvent.from_json(event))
        return [
            RuleContext(
                invoice_sent=found_invoice.get(i),
                earlier_edits=tuple(sorted(found_edits.get(i, ()), key=lambda e: e.position)),
            )
            for i in range(len(changes))
        ]

    def later_changes(self, invoices: Sequence[InvoiceSent]) -> list[tuple[ChangeEvent, ...]]:
        later: dict[int, list[ChangeEvent]] = {}
        wanted = [(i, inv) for i, inv in enumerate(invoices) if inv.booking_id is not None]
        if wanted:
            payload = [
                {
                    "idx": i,
                    "source": inv.source,
                    "commit_lsn": format_position(inv.commit_position),
                    "booking_id": inv.booking_id,
                }
                for i, inv in wanted
            ]
            for idx, event in self._conn.execute(_LATER, (_json(payload),)):
                later.setdefault(idx, []).append(ChangeEvent.from_json(event))
        return [tuple(later.get(i, ())) for i in range(len(invoices))]

    def record(
        self, alerts: Sequence[Alert], *, owner: str, channels: Sequence[str]
    ) -> list[RecordedAlert]:
        """Insert the alerts not recorded before, with their outbox rows; returns only those."""
        if not alerts:
            return []
        params = {
            "alerts": _json([_alert_row(a) for a in alerts]),
            "owner": owner,
            "channels": list(channels),
        }
        return [_recorded(*row) for row in self._conn.execute(_RECORD, params)]

    def dead_letter(self, record: Record, error: str) -> None:
        self._conn.execute(
            _DEAD_LETTER,
            (record.topic, record.partition, record.offset, record.key, record.value, error),
        )


class AlertStore:
    """One warehouse connection of the alerting job (the consumer and each output have their own)."""

    def __init__(self, dsn: str, application_name: str) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._conn: Conn | None = None

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._dsn, application_name=self._application_name)
            except psycopg.OperationalError as exc:
                raise pg_connect_error("cannot connect to the warehouse", exc, self._dsn) from None
        return self._conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            if self._conn is not None:
                self._conn.close()
            raise TransientError(f"warehouse: {str(exc).strip()}") from None
        except psycopg.errors.UndefinedTable:
            raise TerminalError(
                "the warehouse has no alerts tables: run `bookaudit warehouse init` first"
            ) from None
        except psycopg.errors.DeadlockDetected:
            raise TransientError("warehouse: deadlock with another alerts consumer") from None
        except psycopg.Error as exc:
            raise pg_error("warehouse", exc) from None

    @contextmanager
    def batch(self) -> Iterator[BatchTransaction]:
        """One transaction: everything in it commits together or not at all."""
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                yield BatchTransaction(conn)

    def hold_lock(self, name: str) -> bool:
        """Take a session advisory lock named `name` if free; it lasts as long as the connection."""
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,)
                ).fetchone()
        return bool(row and row[0])

    def release_lock(self, name: str) -> None:
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))

    def pending(self, channel: str, me: str) -> list[Pending]:
        """Outbox entries of other instances (live or dead) not delivered on this channel."""
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                rows = conn.execute(_PENDING, {"channel": channel, "me": me}).fetchall()
        return [Pending(_recorded(a, doc, at), owner, int(at)) for a, owner, doc, at in rows]

    def delivered(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        rows = [
            {
                "alert": d.alert,
                "target": d.target,
                "kafka_partition": d.kafka_partition,
                "kafka_offset": d.kafka_offset,
                "http_status": d.http_status,
                "attempts": d.attempts,
            }
            for d in deliveries
        ]
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                conn.execute(_DELIVERED, {"channel": channel, "rows": _json(rows)})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
