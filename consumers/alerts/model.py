"""Pure values of the alerting job: the changes rules judge, the alerts they raise, their documents."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from bookaudit.consumers.alerts.ruleset import AfterInvoiceSent, RuleSet
from bookaudit.consumers.records import AuditEntry, FieldChange
from bookaudit.model import ActorContext, Position, format_position, parse_position

_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """An update of a watched table that touched a field some rule watches.

    (source, commit_position, sequence) is its identity, the same key audit.row_changes is unique on.
    """

    source: str
    commit_position: Position
    sequence: int
    txid: int
    committed_at_ms: int
    table: str  # schema.table
    booking_id: str | None
    actor: ActorContext
    changes: tuple[FieldChange, ...]
    price_column: str
    old_price: str | None
    new_price: str | None
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int

    @property
    def changed(self) -> frozenset[str]:
        return frozenset(c.field for c in self.changes)

    @property
    def position(self) -> tuple[int, int]:
        """Commit order on the source: what "before" and "after" mean across topics."""
        return (self.commit_position, self.sequence)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "commit_lsn": format_position(self.commit_position),
            "sequence": self.sequence,
            "txid": self.txid,
            "committed_at_ms": self.committed_at_ms,
            "table": self.table,
            "booking_id": self.booking_id,
            "actor": self.actor.to_dict(),
            "changes": [[c.field, c.old, c.new] for c in self.changes],
            "price_column": self.price_column,
            "old_price": self.old_price,
            "new_price": self.new_price,
            "kafka_topic": self.kafka_topic,
            "kafka_partition": self.kafka_partition,
            "kafka_offset": self.kafka_offset,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ChangeEvent:
        return cls(
            source=raw["source"],
            commit_position=parse_position(raw["commit_lsn"]),
            sequence=int(raw["sequence"]),
            txid=int(raw["txid"]),
            committed_at_ms=int(raw["committed_at_ms"]),
            table=raw["table"],
            booking_id=raw["booking_id"],
            actor=ActorContext.from_dict(raw["actor"]),
            changes=tuple(FieldChange(f, o, n) for f, o, n in raw["changes"]),
            price_column=raw["price_column"],
            old_price=raw["old_price"],
            new_price=raw["new_price"],
            kafka_topic=raw["kafka_topic"],
            kafka_partition=int(raw["kafka_partition"]),
            kafka_offset=int(raw["kafka_offset"]),
        )


@dataclass(frozen=True, slots=True)
class InvoiceSent:
    """An invoice row change that shows the invoice as sent, committed at this position."""

    source: str
    commit_position: Position
    sequence: int
    committed_at_ms: int
    booking_id: str | None
    invoice: str  # the invoice's primary key, as text

    @property
    def position(self) -> tuple[int, int]:
        return (self.commit_position, self.sequence)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "commit_lsn": format_position(self.commit_position),
            "sequence": self.sequence,
            "committed_at_ms": self.committed_at_ms,
            "booking_id": self.booking_id,
            "invoice": self.invoice,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> InvoiceSent:
        return cls(
            source=raw["source"],
            commit_position=parse_position(raw["commit_lsn"]),
            sequence=int(raw["sequence"]),
            committed_at_ms=int(raw["committed_at_ms"]),
            booking_id=raw["booking_id"],
            invoice=raw["invoice"],
        )


Watched = ChangeEvent | InvoiceSent


def watch_events(entry: AuditEntry, rules: RuleSet) -> tuple[Watched, ...]:
    """What of one audit entry the alerting job cares about; usually nothing or one thing."""
    table = f"{entry.schema_name}.{entry.table_name}"
    found: list[Watched] = []
    watched = rules.watched(table)
    interesting = {f for r in rules.rules for f in r.fields}
    if (
        watched is not None
        and entry.action == "update"
        and any(c.field in interesting for c in entry.fields)
    ):
        row = entry.after or entry.before or {}
        before, after = entry.before or {}, entry.after or {}
        found.append(
            ChangeEvent(
                source=entry.source,
                commit_position=entry.commit_position,
                sequence=entry.sequence,
                txid=entry.txid,
                committed_at_ms=entry.committed_at_ms,
                table=table,
                booking_id=row.get(watched.booking_column),
                actor=entry.actor,
                changes=entry.fields,
                price_column=watched.price_column,
                old_price=before.get(watched.price_column),
                new_price=after.get(watched.price_column),
                kafka_topic=entry.kafka_topic,
                kafka_partition=entry.kafka_partition,
                kafka_offset=entry.kafka_offset,
            )
        )
    invoices = rules.invoices
    if (
        invoices is not None
        and table == invoices.table
        and entry.after is not None
        and entry.after.get(invoices.sent_column) is not None
        and any(isinstance(r, AfterInvoiceSent) for r in rules.rules)
    ):
        key = entry.row_key or {}
        found.append(
            InvoiceSent(
                source=entry.source,
                commit_position=entry.commit_position,
                sequence=entry.sequence,
                committed_at_ms=entry.committed_at_ms,
                booking_id=entry.after.get(invoices.booking_column),
                invoice=",".join(str(v) for v in key.values()),
            )
        )
    return tuple(found)


def decimal_or_none(text: str | None) -> Decimal | None:
    """NUMERIC text to Decimal; anything else (NULL, 'NaN', not a number) is None."""
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def change_percent(old: str | None, new: str | None) -> Decimal | None:
    """(new - old) / old in percent, to the cent; None when old is zero or either is not numeric."""
    before, after = decimal_or_none(old), decimal_or_none(new)
    if before is None or after is None or before == 0:
        return None
    return ((after - before) * 100 / before).quantize(_CENT, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class Alert:
    """One rule's verdict on one change: the record every output (table, topic, stdout, webhook)
    carries."""

    rule: str
    kind: str
    severity: str
    message: str
    event: ChangeEvent
    fields: tuple[FieldChange, ...]

    @property
    def alert_id(self) -> str:
        """Deterministic, so a replay or a restart produces the same id and dedupes on it."""
        e = self.event
        return f"{e.source}:{format_position(e.commit_position)}:{e.sequence}:{self.rule}"

    @property
    def change_pct(self) -> Decimal | None:
        return change_percent(self.event.old_price, self.event.new_price)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def alert_document(alert: Alert) -> dict[str, Any]:
    """The alert as one JSON-able dict; with recorded_at_ms added it is exactly an alert.avsc
    record. Stored in audit.alerts.document and sent unchanged to every output."""
    e = alert.event
    pct = alert.change_pct
    return {
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "booking_id": e.booking_id,
        "table": e.table,
        "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in alert.fields],
        "old_price": e.old_price,
        "new_price": e.new_price,
        "change_pct": None if pct is None else str(pct),
        "actor": e.actor.display,
        "actor_id": e.actor.id,
        "actor_role": e.actor.role,
        "actor_origin": e.actor.origin,
        "approval_ref": e.actor.approval_ref,
        "reason": e.actor.reason,
        "application": e.actor.application,
        "db_user": e.actor.db_user,
        "txid": e.txid,
        "committed_at_ms": e.committed_at_ms,
        "committed_at": _iso(e.committed_at_ms),
        "audit_entry": {
            "source": e.source,
            "commit_lsn": format_position(e.commit_position),
            "sequence": e.sequence,
            "kafka_topic": e.kafka_topic,
            "kafka_partition": e.kafka_partition,
            "kafka_offset": e.kafka_offset,
        },
    }
