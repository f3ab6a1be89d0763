"""Pure alert rules: (change, context) → alerts. The context is looked up elsewhere and passed in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from bookaudit.consumers.alerts.model import (
    Alert,
    ChangeEvent,
    InvoiceSent,
    change_percent,
    decimal_or_none,
)
from bookaudit.consumers.alerts.ruleset import (
    AfterInvoiceSent,
    ByFieldworker,
    OutsideBusinessHours,
    RepeatedEdits,
    RoleNotAllowed,
    Rule,
    RuleSet,
    Threshold,
    UntrustedAttribution,
)
from bookaudit.consumers.records import FieldChange

R = TypeVar("R", bound=Rule)


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What some rules need beyond the change itself, looked up by the caller before evaluating.

    invoice_sent: the booking's first invoice seen as sent in a transaction before the change.
    earlier_edits: changes to the same booking by the same actor, before this one, within the
    longest repeated-edits window (rules filter further).
    """

    invoice_sent: InvoiceSent | None = None
    earlier_edits: tuple[ChangeEvent, ...] = ()


NO_CONTEXT = RuleContext()

# A check looks at one rule, one change, the watched fields it changed and the context, and
# says why it is an alert, or returns None.
Check = Callable[[Any, ChangeEvent, tuple[FieldChange, ...], RuleContext], str | None]


def _role(event: ChangeEvent) -> str:
    return event.actor.role or "none"


def _check_role(
    rule: RoleNotAllowed, event: ChangeEvent, _f: tuple[FieldChange, ...], _c: RuleContext
) -> str | None:
    if event.actor.role in rule.allowed_roles:
        return None
    return (
        f"role {_role(event)} may not change it (allowed: {', '.join(sorted(rule.allowed_roles))})"
    )


def _exceeds(rule: Threshold, old: Decimal, new: Decimal) -> bool:
    delta = abs(new - old)
    if rule.min_absolute is not None and delta > rule.min_absolute:
        return True
    if rule.min_percent is None:
        return False
    if old == 0:
        return delta != 0  # any move away from zero is an infinite percentage
    return delta * 100 / abs(old) > rule.min_percent


def _check_threshold(
    rule: Threshold, _e: ChangeEvent, fields: tuple[FieldChange, ...], _c: RuleContext
) -> str | None:
    for change in fields:
        old, new = decimal_or_none(change.old), decimal_or_none(change.new)
        if old is None or new is None or not _exceeds(rule, old, new):
            continue
        limits = []
        if rule.min_percent is not None:
            limits.append(f"{rule.min_percent}%")
        if rule.min_absolute is not None:
            limits.append(f"{rule.min_absolute}")
        pct = change_percent(change.old, change.new)
        moved = f"{new - old:+}" + ("" if pct is None else f" ({pct:+}%)")
        return f"{change.field} moved by {moved}, over {' or '.join(limits)}, without approval"
    return None


def _check_after_invoice(
    _r: AfterInvoiceSent, event: ChangeEvent, _f: tuple[FieldChange, ...], ctx: RuleContext
) -> str | None:
    invoice = ctx.invoice_sent
    if (
        invoice is None
        or event.booking_id is None
        or invoice.booking_id != event.booking_id
        or invoice.source != event.source
        # Sent in the same transaction as the change is not "after": the two are one act.
        or invoice.commit_position >= event.commit_position
    ):
        return None
    sent = datetime.fromtimestamp(invoice.committed_at_ms / 1000, tz=UTC)
    return f"changed after invoice {invoice.invoice} was sent ({sent:%Y-%m-%d %H:%M:%S} UTC)"


def _check_fieldworker(
    rule: ByFieldworker, event: ChangeEvent, _f: tuple[FieldChange, ...], _c: RuleContext
) -> str | None:
    if event.actor.role not in rule.roles:
        return None
    return f"changed by a fieldworker (role {_role(event)})"


def _check_hours(
    rule: OutsideBusinessHours, event: ChangeEvent, _f: tuple[FieldChange, ...], _c: RuleContext
) -> str | None:
    local = datetime.fromtimestamp(event.committed_at_ms / 1000, tz=rule.zone)
    clock = local.time().replace(tzinfo=None)
    inside = (
        local.weekday() in rule.days
        and clock >= rule.start
        and (rule.end is None or clock < rule.end)
    )
    if inside:
        return None
    return f"changed outside business hours ({local:%a %H:%M} {rule.timezone})"


def _check_repeated(
    rule: RepeatedEdits, event: ChangeEvent, _f: tuple[FieldChange, ...], ctx: RuleContext
) -> str | None:
    if event.booking_id is None:
        return None
    window_ms = rule.window_minutes * 60_000
    watched = frozenset(rule.fields)
    earlier = [
        e
        for e in ctx.earlier_edits
        if e.source == event.source
        and e.booking_id == event.booking_id
        and e.table == event.table
        and e.actor.identity == event.actor.identity
        and e.position < event.position
        and 0 <= event.committed_at_ms - e.committed_at_ms <= window_ms
        and e.changed & watched
    ]
    count = len(earlier) + 1
    if count < rule.edits:
        return None
    return f"edit {count} by the same actor within {rule.window_minutes} min"


# Origins the source vouches for; anything else is a forged or missing context.
TRUSTED_ORIGINS = frozenset({"application", "db_session"})


def _check_untrusted(
    _r: UntrustedAttribution, event: ChangeEvent, _f: tuple[FieldChange, ...], _c: RuleContext
) -> str | None:
    origin = event.actor.origin
    if origin in TRUSTED_ORIGINS:
        return None
    if origin == "forged":
        return "a forged actor context was sent in its transaction; the attribution shown is the database's own"
    return f"no trustworthy actor context (origin {origin}): who made it is unknown"


CHECKS: dict[type[Rule], Check] = {
    RoleNotAllowed: _check_role,
    Threshold: _check_threshold,
    AfterInvoiceSent: _check_after_invoice,
    ByFieldworker: _check_fieldworker,
    OutsideBusinessHours: _check_hours,
    RepeatedEdits: _check_repeated,
    UntrustedAttribution: _check_untrusted,
}


def watched_fields(rule: Rule, event: ChangeEvent) -> tuple[FieldChange, ...]:
    """The fields of this change the rule watches; empty when the rule does not apply at all."""
    if rule.tables and event.table not in rule.tables:
        return ()
    return tuple(c for c in event.changes if c.field in rule.fields)


def approved(rule: Rule, event: ChangeEvent) -> bool:
    actor = event.actor
    return (rule.approval_exempts and bool(actor.approval_ref)) or (
        actor.role is not None and actor.role in rule.exempt_roles
    )


def describe_change(event: ChangeEvent, fields: Sequence[FieldChange]) -> str:
    parts = []
    for c in fields:
        text = f"{c.field} {c.old} -> {c.new}"
        pct = change_percent(c.old, c.new) if c.field == event.price_column else None
        parts.append(text + ("" if pct is None else f" ({pct:+}%)"))
    where = f"{event.table.split('.')[-1]} {event.booking_id or '?'}"
    return f"{', '.join(parts)} on {where} by {event.actor.display}"


def apply_rule(rule: Rule, event: ChangeEvent, ctx: RuleContext) -> Alert | None:
    fields = watched_fields(rule, event)
    if not fields or approved(rule, event):
        return None
    why = CHECKS[type(rule)](rule, event, fields, ctx)
    if why is None:
        return None
    return Alert(
        rule=rule.name,
        kind=rule.kind,
        severity=rule.severity,
        message=f"{describe_change(event, fields)}: {why}",
        event=event,
        fields=fields,
    )


def evaluate(event: ChangeEvent, ctx: RuleContext, rules: RuleSet) -> list[Alert]:
    """Every rule's verdict on one change, in rule-file order."""
    return [a for rule in rules.rules if (a := apply_rule(rule, event, ctx)) is not None]


def evaluate_invoice(
    invoice: InvoiceSent, later: Iterable[ChangeEvent], rules: RuleSet
) -> list[Alert]:
    """An invoice seen as sent after changes that committed later than it (topics and partitions
    are read in no common order) turns those changes into after-invoice alerts now."""
    ctx = RuleContext(invoice_sent=invoice)
    found = []
    for rule in _of_kind(rules.rules, AfterInvoiceSent):
        for event in later:
            alert = apply_rule(rule, event, ctx)
            if alert is not None:
                found.append(alert)
    return found


def _of_kind(rules: Iterable[Rule], kind: type[R]) -> list[R]:
    return [r for r in rules if isinstance(r, kind)]


def evaluate_batch(
    changes: Sequence[ChangeEvent],
    contexts: Sequence[RuleContext],
    invoices: Sequence[InvoiceSent],
    later: Sequence[Sequence[ChangeEvent]],
    rules: RuleSet,
) -> list[Alert]:
    """A batch's alerts, each once: a change and its invoice in the same batch are judged both
    ways (the change sees the invoice, the invoice sees the change) and meet on the alert id."""
    found: dict[str, Alert] = {}
    for change, ctx in zip(changes, contexts, strict=True):
        for alert in evaluate(change, ctx, rules):
            found.setdefault(alert.alert_id, alert)
    for invoice, events in zip(invoices, later, strict=True):
        for alert in evaluate_invoice(invoice, events, rules):
            found.setdefault(alert.alert_id, alert)
    return list(found.values())
