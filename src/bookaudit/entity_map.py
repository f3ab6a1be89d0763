"""The entity map: which source tables hold bookings, customers and related rows, and how each
related row reaches its booking. One model for every stage that needs the schema's names."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bookaudit._resources import read_text
from bookaudit.errors import ConfigError

ROLES = ("schedule", "price", "status", "assignment")
BOOKING = "booking"
CUSTOMER = "customer"
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# A chain longer than this is a mistake, not a schema (payments → invoices → booking is 2).
MAX_DEPTH = 8

Row = Mapping[str, str | None]


@dataclass(frozen=True, order=True)
class TableRef:
    """A schema-qualified source table; a bare name means the `public` schema."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, where: str = "table") -> TableRef:
        schema, dot, name = text.partition(".")
        if not dot:
            schema, name = "public", text
        if not schema or not name or "." in name:
            raise ConfigError(f"{where} {text!r}: expected 'schema.table' or 'table'")
        return cls(schema, name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class FieldRoles:
    """Which columns of one table are its schedule, price, status and assignment."""

    schedule: tuple[str, ...] = ()
    price: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    assignment: tuple[str, ...] = ()

    def role_of(self, column: str) -> str | None:
        for role, column_ in self.items():
            if column_ == column:
                return role
        return None

    def items(self) -> Iterator[tuple[str, str]]:
        """(role, column) pairs in ROLES order."""
        for role in ROLES:
            for column in getattr(self, role):
                yield role, column

    def columns(self) -> tuple[str, ...]:
        return tuple(c for _, c in self.items())


@dataclass(frozen=True)
class Entity:
    """One mapped table and how its rows reach a booking.

    kind is "booking", "customer", or the noun of a related table ("invoice", "payment",
    "assignment", "note", or any other); a related row names its booking either directly
    (`booking_column`) or through another mapped table (`through`, whose key `through_column`
    holds)."""

    table: TableRef
    kind: str
    key: str | None = None
    booking_column: str | None = None
    through: TableRef | None = None
    through_column: str | None = None
    customer_column: str | None = None
    sent_column: str | None = None
    fields: FieldRoles = field(default_factory=FieldRoles)

    @property
    def label(self) -> str:
        """The noun a reader sees: "Booking", "Invoice", "Payment"."""
        return self.kind.replace("_", " ").capitalize()

    @property
    def link_column(self) -> str | None:
        """The column of this table that leads towards the booking (None for the booking)."""
        return self.booking_column or self.through_column

    def columns(self) -> tuple[str, ...]:
        """Every column this entity names, for checking against the source catalog."""
        named = (
            self.key,
            self.booking_column,
            self.through_column,
            self.customer_column,
            self.sent_column,
        )
        return tuple(dict.fromkeys([c for c in named if c] + list(self.fields.columns())))


@dataclass(frozen=True)
class EntityMap:
    """The booking table, the customer table, the related tables, and the noise fields."""

    booking: Entity
    customer: Entity | None = None
    related: tuple[Entity, ...] = ()
    ignore_fields: tuple[str, ...] = ()
    cancelled_statuses: tuple[str, ...] = ()
    origin: str = "built-in sample map"

    @property
    def entities(self) -> tuple[Entity, ...]:
        head = (self.booking,) if self.customer is None else (self.booking, self.customer)
        return head + self.related

    @property
    def tables(self) -> tuple[TableRef, ...]:
        return tuple(e.table for e in self.entities)

    def entity(self, table: TableRef | str) -> Entity | None:
        ref = table if isinstance(table, TableRef) else TableRef.parse(table)
        for entity in self.entities:
            if entity.table == ref:
                return entity
        return None

    def of_kind(self, kind: str) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.kind == kind)

    def is_ignored(self, column: str) -> bool:
        return column in self.ignore_fields

    def path(self, table: TableRef | str) -> tuple[Entity, ...]:
        """The mapped tables a row of `table` passes on its way to the booking, itself first:
        (payments, invoices) for payments through invoices; () for an unmapped table."""
        entity = self.entity(table)
        chain: list[Entity] = []
        while entity is not None and entity.kind != BOOKING and len(chain) <= MAX_DEPTH:
            chain.append(entity)
            if entity.through is None:
                break
            entity = self.entity(entity.through)
        return tuple(chain)

    def booking_of(
        self,
        table: TableRef | str,
        row: Row,
        lookup: Callable[[TableRef, str], Row | None] = lambda _t, _k: None,
    ) -> str | None:
        """Which booking a row belongs to. `lookup(table, key)` returns the row of a mapped
        table with that key, for related tables reached through another; None when unknown."""
        entity = self.entity(table)
        for _ in range(MAX_DEPTH + 1):
            if entity is None:
                return None
            if entity.kind == BOOKING:
                assert entity.key is not None
                return row.get(entity.key)
            if entity.kind == CUSTOMER:
                return None
            if entity.booking_column is not None:
                return row.get(entity.booking_column)
            assert entity.through is not None and entity.through_column is not None
            parent_key = row.get(entity.through_column)
            if parent_key is None:
                return None
            if entity.through == self.booking.table:
                return parent_key
            parent = lookup(entity.through, parent_key)
            if parent is None:
                return None
            row, entity = parent, self.entity(entity.through)
        return None

    def customer_of(self, booking_row: Row) -> str | None:
        column = self.booking.customer_column
        return None if column is None else booking_row.get(column)


# --- parsing ----------------------------------------------------------------------------------


class _Section:
    """One TOML table being read: every key taken is ticked off, leftovers are errors."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        self.raw: dict[str, Any] = raw
        self.where = where
        self.seen: set[str] = set()

    def text(self, key: str, *, required: bool = False) -> str | None:
        self.seen.add(key)
        value = self.raw.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{self.where}: {key} is required")
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where}: {key} must be a non-empty string, got {value!r}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        self.seen.add(key)
        value = self.raw.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where}: {key} must be a list of column names, got {value!r}")
        return tuple(value)

    def table(self, key: str, *, required: bool = False) -> TableRef | None:
        text = self.text(key, required=required)
        return None if text is None else TableRef.parse(text, f"{self.where}: {key}")

    def roles(self) -> FieldRoles:
        return FieldRoles(**{role: self.texts(role) for role in ROLES})

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key {unknown[0]!r}")


def _booking(raw: Any, where: str) -> tuple[Entity, tuple[str, ...]]:
    s = _Section(raw, where)
    entity = Entity(
        table=s.table("table", required=True),  # type: ignore[arg-type]
        kind=BOOKING,
        key=s.text("key", required=True),
        customer_column=s.text("customer"),
        fields=s.roles(),
    )
    cancelled = s.texts("cancelled")
    s.done()
    return entity, cancelled


def _customer(raw: Any, where: str) -> Entity:
    s = _Section(raw, where)
    entity = Entity(
        table=s.table("table", required=True),  # type: ignore[arg-type]
        kind=CUSTOMER,
        key=s.text("key", required=True),
        fields=s.roles(),
    )
    s.done()
    return entity


def _related(raw: Any, where: str) -> Entity:
    s = _Section(raw, where)
    table = s.table("table", required=True)
    assert table is not None
    s.where = f"{where} ({table})"
    kind = s.text("kind", required=True)
    assert kind is not None
    if not _KIND.match(kind) or kind in (BOOKING, CUSTOMER):
        raise ConfigError(
            f"{s.where}: kind {kind!r} must be a lower-case noun such as invoice or payment"
        )
    booking = s.text("booking")
    through = s.table("through")
    via = s.text("via")
    if (booking is None) == (through is None):
        raise ConfigError(
            f"{s.where}: set either booking (the column naming the booking) "
            "or through (the table it reaches the booking by), not both or neither"
        )
    if through is not None and via is None:
        raise ConfigError(f"{s.where}: through {through} needs via, the column naming its key")
    if booking is not None and via is not None:
        raise ConfigError(f"{s.where}: via goes with through, not with booking")
    entity = Entity(
        table=table,
        kind=kind,
        key=s.text("key"),
        booking_column=booking,
        through=through,
        through_column=via,
        sent_column=s.text("sent"),
        fields=s.roles(),
    )
    s.done()
    return entity


def _check_links(m: EntityMap, where: str) -> None:
    seen: set[TableRef] = set()
    for entity in m.entities:
        if entity.table in seen:
            raise ConfigError(f"{where}: table {entity.table} is mapped twice")
        seen.add(entity.table)
    if m.customer is not None and m.booking.customer_column is None:
        raise ConfigError(f"{where}: [map.booking] needs customer, the column naming the customer")
    if m.customer is None and m.booking.customer_column is not None:
        raise ConfigError(
            f"{where}: [map.booking] names a customer column but [map.customer] is missing"
        )
    for entity in m.related:
        if entity.through is None:
            continue
        target = m.entity(entity.through)
        if target is None or target.kind == CUSTOMER:
            raise ConfigError(
                f"{where}: {entity.table} goes through {entity.through}, "
                "which is neither the booking table nor a [[map.related]] table"
            )
        if target.key is None:
            raise ConfigError(
                f"{where}: {entity.table} goes through {entity.through}, which needs key "
                "(the column that its via column holds)"
            )
        chain = m.path(entity.table)
        if len(chain) > MAX_DEPTH or len({e.table for e in chain}) != len(chain):
            names = " → ".join(str(e.table) for e in chain[: MAX_DEPTH + 1])
            raise ConfigError(f"{where}: {entity.table} never reaches the booking ({names} …)")


def parse_map(doc: Mapping[str, Any], origin: str) -> EntityMap:
    """Build the map from a [map] table (already parsed from TOML)."""
    where = f"{origin}: [map]"
    top = _Section(dict(doc), where)
    top.seen.update({"booking", "customer", "related"})
    if "booking" not in doc:
        raise ConfigError(f"{where}: [map.booking] is required")
    booking, cancelled = _booking(doc["booking"], f"{origin}: [map.booking]")
    customer = (
        None if "customer" not in doc else _customer(doc["customer"], f"{origin}: [map.customer]")
    )
    raw_related = doc.get("related", [])
    if not isinstance(raw_related, list):
        raise ConfigError(f"{where}: related must be [[map.related]] tables")
    related = tuple(
        _related(r, f"{origin}: [[map.related]] #{i + 1}") for i, r in enumerate(raw_related)
    )
    ignore = top.texts("ignore_fields")
    top.done()
    result = EntityMap(booking, customer, related, ignore, cancelled, origin)
    _check_links(result, origin)
    return result


def map_from_toml(doc: Mapping[str, Any], origin: str) -> EntityMap | None:
    """The [map] of a parsed bookaudit.toml, or None when it has none."""
    raw = doc.get("map")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: map must be a table ([map])")
    return parse_map(raw, origin)


def load_map(path: Path) -> EntityMap:
    """The [map] of a TOML file; a file with no [map] is a mistake here."""
    if not path.is_file():
        raise ConfigError(f"map file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    found = map_from_toml(doc, str(path))
    if found is None:
        raise ConfigError(f"{path}: has no [map] table")
    return found


@cache
def default_map() -> EntityMap:
    """The sample schema's map (src/bookaudit/demo/entity_map.toml)."""
    doc = tomllib.loads(read_text("demo", "entity_map.toml"))
    found = map_from_toml(doc, "built-in sample map")
    assert found is not None
    return found
