"""Parses the alert rule file (TOML) into the rule set (ruleset.py), naming the key at fault;
table and column defaults come from the entity map."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bookaudit.consumers.alerts.ruleset import (
    DAYS,
    DEFAULT_RULES,
    RULE_KINDS,
    SEVERITIES,
    AfterInvoiceSent,
    ByFieldworker,
    InvoiceSource,
    OutsideBusinessHours,
    RepeatedEdits,
    RoleNotAllowed,
    Rule,
    RuleSet,
    Threshold,
    UntrustedAttribution,
    WatchedTable,
    default_rules,
    map_invoices,
    map_watch,
)
from bookaudit.entity_map import EntityMap, default_map
from bookaudit.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TABLE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


# --- parsing ----------------------------------------------------------------------------------


class _Section:
    """One TOML table being read: every key taken is ticked off, leftovers are errors."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        self.raw: dict[str, Any] = raw
        self.where = where
        self.seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.raw.get(key, default)

    def text(
        self, key: str, default: str | None = None, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = self.get(key, default)
        if value is None:
            raise ConfigError(f"{self.where}: {key} is required")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where}: {key} must be a non-empty string, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise ConfigError(f"{self.where}: {key} {value!r} is not a valid {key}")
        return value

    def texts(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where}: {key} must be a list of strings, got {value!r}")
        return tuple(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where}: {key} must be true or false, got {value!r}")
        return value

    def positive_int(self, key: str, default: int, minimum: int = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.where}: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    def amount(self, key: str) -> Decimal | None:
        """Numbers stay exact: the file is parsed with floats as Decimal, strings are accepted."""
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
            raise ConfigError(f"{self.where}: {key} must be a number, got {value!r}")
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            raise ConfigError(f"{self.where}: {key} must be a number, got {value!r}") from None
        if not number.is_finite() or number < 0:
            raise ConfigError(f"{self.where}: {key} must be a non-negative number, got {value!r}")
        return number

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key {unknown[0]!r}")


def _watch(raw: Any, where: str, entity_map: EntityMap) -> WatchedTable:
    s = _Section(raw, where)
    table = s.text("table", pattern=_TABLE)
    booking, price = s.get("booking_column"), s.get("price_column")
    if booking is None or price is None:
        mapped = map_watch(entity_map, table, where)
        booking = mapped.booking_column if booking is None else booking
        price = mapped.price_column if price is None else price
    watched = WatchedTable(
        table=table,
        booking_column=s.text("booking_column", booking),
        price_column=s.text("price_column", price),
    )
    s.done()
    return watched


def _invoices(raw: Any, where: str, entity_map: EntityMap) -> InvoiceSource:
    s = _Section(raw, where)
    mapped = map_invoices(entity_map)
    table = s.text("table", None if mapped is None else mapped.table, _TABLE)
    same = mapped if mapped is not None and mapped.table == table else None
    source = InvoiceSource(
        table=table,
        booking_column=s.text("booking_column", None if same is None else same.booking_column),
        sent_column=s.text("sent_column", None if same is None else same.sent_column),
    )
    s.done()
    return source


def _hours(s: _Section) -> tuple[time, time | None]:
    text = s.text("hours", "08:00-18:00")
    match = _HOURS.match(text)
    if match is None:
        raise ConfigError(f"{s.where}: hours {text!r} must look like 08:00-18:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start = time(h1, m1)
    end = None if (h2, m2) == (24, 0) else time(h2 % 24, m2)
    if h2 == 24 and m2 != 0:
        raise ConfigError(f"{s.where}: hours {text!r} must end by 24:00")
    if end is not None and end <= start:
        raise ConfigError(f"{s.where}: hours {text!r} must end after they start")
    return start, end


def _rule(raw: Any, where: str, watched: tuple[str, ...], prices: tuple[str, ...]) -> Rule:
    s = _Section(raw, where)
    name = s.text("name", pattern=_NAME)
    s.where = f"{where} ({name!r})"
    kind = s.text("kind")
    cls = RULE_KINDS.get(kind)
    if cls is None:
        raise ConfigError(f"{s.where}: unknown kind {kind!r}; one of {', '.join(RULE_KINDS)}")
    severity = s.text("severity", "medium")
    if severity not in SEVERITIES:
        raise ConfigError(
            f"{s.where}: severity {severity!r} must be one of {', '.join(SEVERITIES)}"
        )
    tables = s.texts("tables", ())
    for table in tables:
        if table not in watched:
            raise ConfigError(f"{s.where}: table {table!r} is not in a [[watch]] section")
    common: dict[str, Any] = {
        "name": name,
        "severity": severity,
        "fields": s.texts("fields", prices),
        "tables": tables,
        "approval_exempts": s.flag("approval_exempts", cls is not UntrustedAttribution),
        "exempt_roles": frozenset(s.texts("exempt_roles", ())),
    }
    rule: Rule
    if cls is RoleNotAllowed:
        rule = RoleNotAllowed(
            **common, allowed_roles=frozenset(s.texts("allowed_roles", ("admin",)))
        )
    elif cls is Threshold:
        percent, absolute = s.amount("min_percent"), s.amount("min_absolute")
        if percent is None and absolute is None:
            raise ConfigError(f"{s.where}: set min_percent, min_absolute or both")
        rule = Threshold(**common, min_percent=percent, min_absolute=absolute)
    elif cls is AfterInvoiceSent:
        rule = AfterInvoiceSent(**common)
    elif cls is UntrustedAttribution:
        rule = UntrustedAttribution(**common)
    elif cls is ByFieldworker:
        rule = ByFieldworker(**common, roles=frozenset(s.texts("roles", ("fieldworker",))))
    elif cls is OutsideBusinessHours:
        zone = s.text("timezone")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{s.where}: timezone {zone!r} is not a known IANA zone") from None
        start, end = _hours(s)
        days = s.texts("days", DAYS[:5])
        for day in days:
            if day not in DAYS:
                raise ConfigError(f"{s.where}: day {day!r} must be one of {', '.join(DAYS)}")
        rule = OutsideBusinessHours(
            **common,
            timezone=zone,
            start=start,
            end=end,
            days=frozenset(DAYS.index(d) for d in days),
        )
    else:
        rule = RepeatedEdits(
            **common,
            edits=s.positive_int("edits", 3, minimum=2),
            window_minutes=s.positive_int("window_minutes", 10),
        )
    s.done()
    return rule


def parse_rules(
    doc: Mapping[str, Any], origin: str, entity_map: EntityMap | None = None
) -> RuleSet:
    """A rule file; tables and columns it leaves out come from the entity map."""
    entity_map = entity_map or default_map()
    top = _Section(dict(doc), origin)
    raw_watch = top.get("watch")
    if raw_watch is None:
        watch: tuple[WatchedTable, ...] = (
            map_watch(entity_map, str(entity_map.booking.table), origin),
        )
    elif isinstance(raw_watch, list) and raw_watch:
        watch = tuple(
            _watch(w, f"{origin}: [[watch]] #{i + 1}", entity_map) for i, w in enumerate(raw_watch)
        )
    else:
        raise ConfigError(f"{origin}: watch must be one or more [[watch]] tables")
    names = tuple(w.table for w in watch)
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: a table is watched twice")
    raw_invoices = top.get("invoices")
    invoices = (
        map_invoices(entity_map)
        if raw_invoices is None
        else _invoices(raw_invoices, f"{origin}: [invoices]", entity_map)
    )
    raw_rules = top.get("rule")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError(f"{origin}: defines no rules; add at least one [[rule]] table")
    prices = tuple(dict.fromkeys(w.price_column for w in watch))
    rules = tuple(
        _rule(r, f"{origin}: [[rule]] #{i + 1}", names, prices) for i, r in enumerate(raw_rules)
    )
    for rule in rules:
        if isinstance(rule, AfterInvoiceSent) and invoices is None:
            raise ConfigError(
                f"{origin}: rule {rule.name!r} needs an [invoices] table (the entity map has "
                "no invoice table with booking and sent columns)"
            )
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(f"{origin}: rule name {rule.name!r} is used twice")
        seen.add(rule.name)
    top.done()
    return RuleSet(watch=watch, invoices=invoices, rules=rules, origin=origin)


def load_rules(path: str | Path | None, entity_map: EntityMap | None = None) -> RuleSet:
    """The rule file when one is named, else the defaults: role, threshold, after invoice;
    both take their tables and columns from the entity map (the sample schema's by default)."""
    if path is None:
        return DEFAULT_RULES if entity_map is None else default_rules(entity_map)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"rule file {file} does not exist")
    try:
        doc = tomllib.loads(file.read_text(), parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_rules(doc, str(file), entity_map)


def describe(rules: RuleSet) -> list[str]:
    """One line per watched table and rule, for `bookaudit alerts rules`."""
    lines = [f"rules from {rules.origin}"]
    for w in rules.watch:
        lines.append(f"watch {w.table}: booking = {w.booking_column}, price = {w.price_column}")
    inv = rules.invoices
    if inv is not None:
        lines.append(
            f"invoices {inv.table}: booking = {inv.booking_column}, "
            f"sent when {inv.sent_column} is set"
        )
    for rule in rules.rules:
        detail: list[str] = [f"fields {', '.join(rule.fields)}"]
        if isinstance(rule, RoleNotAllowed):
            detail.append(f"allowed {', '.join(sorted(rule.allowed_roles))}")
        elif isinstance(rule, Threshold):
            if rule.min_percent is not None:
                detail.append(f"> {rule.min_percent}%")
            if rule.min_absolute is not None:
                detail.append(f"> {rule.min_absolute} absolute")
        elif isinstance(rule, ByFieldworker):
            detail.append(f"roles {', '.join(sorted(rule.roles))}")
        elif isinstance(rule, OutsideBusinessHours):
            end = "24:00" if rule.end is None else rule.end.strftime("%H:%M")
            days = ",".join(DAYS[d] for d in sorted(rule.days))
            detail.append(f"{rule.start:%H:%M}-{end} {days} {rule.timezone}")
        elif isinstance(rule, RepeatedEdits):
            detail.append(f"{rule.edits} edits in {rule.window_minutes} min")
        if rule.exempt_roles:
            detail.append(f"exempt {', '.join(sorted(rule.exempt_roles))}")
        if not rule.approval_exempts:
            detail.append("even with approval_ref")
        lines.append(f"rule {rule.name} [{rule.kind}, {rule.severity}]: {'; '.join(detail)}")
    return lines
