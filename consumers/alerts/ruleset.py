"""The rules the alerts job applies, as values: the tables it watches, each kind of rule with its
parameters, and the default set (rulefile.py reads a TOML rule file into these)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from decimal import Decimal
from zoneinfo import ZoneInfo

from bookaudit.entity_map import EntityMap, default_map
from bookaudit.errors import ConfigError

SEVERITIES = ("low", "medium", "high", "critical")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class WatchedTable:
    """A table whose updates the rules see, and how one of its rows names its booking."""

    table: str  # schema.table
    booking_column: str
    price_column: str


@dataclass(frozen=True)
class InvoiceSource:
    """Where invoices live, so `after_invoice_sent` knows when a booking's invoice went out."""

    table: str
    booking_column: str
    sent_column: str


@dataclass(frozen=True, kw_only=True)
class Rule:
    """What every rule kind shares. `fields` are watched columns (a rule file's default: the
    price columns of the watched tables); `tables` empty means all."""

    name: str
    severity: str = "medium"
    fields: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    # An approval reference approves a change, so no rule fires on it unless told otherwise.
    approval_exempts: bool = True
    exempt_roles: frozenset[str] = frozenset()

    kind = "rule"


@dataclass(frozen=True, kw_only=True)
class RoleNotAllowed(Rule):
    """A watched field changed by a role outside the allow-list (no role counts as outside)."""

    allowed_roles: frozenset[str] = frozenset({"admin"})
    kind = "role_not_allowed"


@dataclass(frozen=True, kw_only=True)
class Threshold(Rule):
    """A numeric watched field moved by more than min_percent or min_absolute."""

    min_percent: Decimal | None = None
    min_absolute: Decimal | None = None
    kind = "threshold"


@dataclass(frozen=True, kw_only=True)
class AfterInvoiceSent(Rule):
    """A watched field changed in a transaction committed after the booking's invoice was sent."""

    kind = "after_invoice_sent"


@dataclass(frozen=True, kw_only=True)
class ByFieldworker(Rule):
    """A watched field changed by someone in a field role."""

    roles: frozenset[str] = frozenset({"fieldworker"})
    kind = "by_fieldworker"


@dataclass(frozen=True, kw_only=True)
class OutsideBusinessHours(Rule):
    """A watched field changed (by commit time) outside the opening hours of a time zone."""

    timezone: str
    start: time = time(8, 0)
    # None is midnight at the end of the day ("08:00-24:00").
    end: time | None = time(18, 0)
    days: frozenset[int] = frozenset(range(5))  # Monday is 0

    kind = "outside_business_hours"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, kw_only=True)
class RepeatedEdits(Rule):
    """The same actor changed watched fields of the same booking `edits` times within a window."""

    edits: int = 3
    window_minutes: int = 10
    kind = "repeated_edits"


@dataclass(frozen=True, kw_only=True)
class UntrustedAttribution(Rule):
    """A watched field changed where the source's attribution cannot be trusted: a forged
    context message in its transaction, or no context at all (see README, threat model).
    Whatever the untrusted context claimed, an approval reference does not excuse it."""

    approval_exempts: bool = False
    kind = "untrusted_attribution"


RULE_KINDS: dict[str, type[Rule]] = {
    cls.kind: cls
    for cls in (
        RoleNotAllowed,
        Threshold,
        AfterInvoiceSent,
        ByFieldworker,
        OutsideBusinessHours,
        RepeatedEdits,
        UntrustedAttribution,
    )
}


@dataclass(frozen=True)
class RuleSet:
    watch: tuple[WatchedTable, ...]
    invoices: InvoiceSource | None
    rules: tuple[Rule, ...]
    origin: str = "built-in defaults"

    def watched(self, table: str) -> WatchedTable | None:
        for w in self.watch:
            if w.table == table:
                return w
        return None

    @property
    def topics_tables(self) -> tuple[str, ...]:
        """The tables whose topics the alerts job reads: the watched ones and the invoices."""
        names = [w.table for w in self.watch]
        if self.invoices is not None and any(isinstance(r, AfterInvoiceSent) for r in self.rules):
            names.append(self.invoices.table)
        return tuple(dict.fromkeys(names))

    @property
    def max_window_minutes(self) -> int:
        return max(
            (r.window_minutes for r in self.rules if isinstance(r, RepeatedEdits)), default=0
        )


def map_watch(entity_map: EntityMap, table: str, where: str) -> WatchedTable:
    """A watched table with the booking and price columns the entity map gives it."""
    entity = entity_map.entity(table)
    booking = None
    if entity is not None:
        booking = entity.key if entity is entity_map.booking else entity.booking_column
    if booking is None:
        raise ConfigError(
            f"{where}: the entity map names no booking column for {table}: set booking_column"
        )
    prices = () if entity is None else entity.fields.price
    if not prices:
        raise ConfigError(
            f"{where}: the entity map names no price column for {table}: set price_column"
        )
    return WatchedTable(table, booking, prices[0])


def map_invoices(entity_map: EntityMap) -> InvoiceSource | None:
    """The first invoice table of the map that names its booking and when it was sent."""
    for entity in entity_map.of_kind("invoice"):
        if entity.booking_column and entity.sent_column:
            return InvoiceSource(str(entity.table), entity.booking_column, entity.sent_column)
    return None


def default_rules(entity_map: EntityMap) -> RuleSet:
    """Price changes on the map's booking table: by a role other than admin, by more than 10 %
    or 50 without approval, (when the map has an invoice table) after the invoice was sent, and
    where the source cannot vouch for who made them (a forged or missing actor context)."""
    booking = str(entity_map.booking.table)
    watch = map_watch(entity_map, booking, f"{entity_map.origin}: default alert rules")
    fields = entity_map.booking.fields.price
    invoices = map_invoices(entity_map)
    rules: tuple[Rule, ...] = (
        RoleNotAllowed(name="price-by-unauthorised-role", severity="high", fields=fields),
        Threshold(
            name="large-price-change-without-approval",
            severity="high",
            fields=fields,
            min_percent=Decimal("10"),
            min_absolute=Decimal("50"),
        ),
    )
    if invoices is not None:
        rules += (
            AfterInvoiceSent(
                name="price-change-after-invoice-sent", severity="critical", fields=fields
            ),
        )
    rules += (
        UntrustedAttribution(name="untrusted-attribution", severity="critical", fields=fields),
    )
    return RuleSet(watch=(watch,), invoices=invoices, rules=rules, origin="built-in defaults")


DEFAULT_RULES = default_rules(default_map())
