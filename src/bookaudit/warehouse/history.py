"""Read-back of the labelled timeline, as-of, diff and the daily log; table, JSON and CSV output."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql

from bookaudit.errors import ConfigError
from bookaudit.terminal import printable
from bookaudit.warehouse._connect import warehouse

HISTORY_KEYS = (
    "committed_at", "actor", "actor_role", "action", "table", "field", "old", "new", "txid",
)  # fmt: skip
# What every per-field row adds to today's keys, so JSON and CSV rows group into entries.
ENTRY_KEYS = ("booking_id", "label", "change_id", "source", "approval_ref", "reason")
BOOKING_EXPORT_KEYS = (*HISTORY_KEYS, *ENTRY_KEYS)
CUSTOMER_EXPORT_KEYS = ("committed_at", "booking", *HISTORY_KEYS[1:], *ENTRY_KEYS)
ACTOR_EXPORT_KEYS = (
    "committed_at", "actor_role", "action", "table", "row", "field", "old", "new", "txid",
    *ENTRY_KEYS,
)  # fmt: skip


# --- options every history command takes --------------------------------------------------


def local_zone() -> tzinfo:
    """The machine's zone, the default for --tz."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def parse_zone(name: str | None) -> tzinfo:
    if not name:
        return local_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--tz {name!r} is not a time zone name (e.g. Europe/Amsterdam, UTC)"
        ) from None


def parse_moment(text: str, zone: tzinfo, option: str, *, end_of_day: bool = False) -> datetime:
    """A date or a timestamp; naive ones are read in `zone`. A bare date means its first
    moment, or with `end_of_day` the first moment of the next day (an exclusive bound)."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = date.fromisoformat(value)
            if end_of_day:
                day += timedelta(days=1)
            return datetime.combine(day, time(), zone)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not a date (2026-11-27) or a timestamp (2026-11-27 14:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


@dataclass(frozen=True)
class Filters:
    """--since/--until (since inclusive, until exclusive), --field, --actor, --label, --source."""

    since: datetime | None = None
    until: datetime | None = None
    fields: tuple[str, ...] = ()
    actors: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    source: str | None = None
    zone: tzinfo = field(default_factory=local_zone)

    def where(self, *, per_field: bool = True) -> sql.Composed:
        """The filters as SQL over a view with the timeline's columns, bound as parameters."""
        # Always one source: the one asked for, or the only one there is (see resolve_source).
        parts: list[sql.Composable] = [sql.SQL("source = %(source)s")]
        if self.since is not None:
            parts.append(sql.SQL("committed_at >= {}").format(self.since))
        if self.until is not None:
            parts.append(sql.SQL("committed_at < {}").format(self.until))
        if self.fields:
            column = sql.SQL(
                "field = ANY({})" if per_field else "string_to_array(fields, ', ') && {}"
            )
            parts.append(column.format(list(self.fields)))
        if self.actors:
            parts.append(
                sql.SQL(
                    # The name the entry shows: the application's actor, else the db role.
                    "(lower(actor) = ANY({0}) OR lower(coalesce(app_actor, db_user)) = ANY({0}))"
                ).format([a.lower() for a in self.actors])
            )
        if self.labels:
            parts.append(
                sql.SQL("EXISTS (SELECT 1 FROM unnest({}::text[]) x "
                        "WHERE strpos(lower(label), lower(x)) > 0)").format(list(self.labels))
            )  # fmt: skip
        return sql.SQL(" AND ").join(parts)


# --- queries ------------------------------------------------------------------------------

_ORDER = sql.SQL("ORDER BY committed_at, commit_lsn, sequence, position")
_ENTRY_COLUMNS = sql.SQL(
    "booking_id, label, change_id, source, approval_ref, reason, app_actor, db_user, "
    "commit_lsn, sequence, position, row_id, kind, link_fields"
)


def _fetch(
    dsn: str, query: sql.Composed, filters: Filters, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    with warehouse(dsn) as conn:
        chosen = resolve_source(conn, filters.source)
        return list(conn.execute(query, {**params, "source": chosen}).fetchall())


def feeding_sources(conn: psycopg.Connection[Any]) -> list[str]:
    """The source names that have audit entries in this warehouse, in name order."""
    rows = conn.execute("SELECT s AS source FROM audit.sources() s").fetchall()
    return [str(r["source"]) for r in rows]


def resolve_source(conn: psycopg.Connection[Any], requested: str | None) -> str | None:
    """The source a read-side command shows: the one asked for, or the only one there is.
    Several sources and none asked for is an error that lists them, never a mix."""
    sources = feeding_sources(conn)
    if requested is not None:
        if sources and requested not in sources:
            raise ConfigError(
                f"--source {requested!r} has no audit entries here; sources: {', '.join(sources)}"
            )
        return requested
    if len(sources) > 1:
        raise ConfigError(
            f"{len(sources)} sources feed this warehouse: pass --source with one of "
            f"{', '.join(sources)}"
        )
    return sources[0] if sources else None


def booking_rows(dsn: str, booking_id: str, filters: Filters) -> list[dict[str, Any]]:
    query = sql.SQL(
        'SELECT committed_at, actor, actor_role, action, table_name AS "table", field, '
        "old_value AS old, new_value AS new, txid, {cols} FROM audit.booking_history "
        "WHERE booking_id = %(id)s AND {where} {order}"
    ).format(cols=_ENTRY_COLUMNS, where=filters.where(), order=_ORDER)
    return _fetch(dsn, query, filters, {"id": booking_id})


def customer_rows(dsn: str, customer_id: str, filters: Filters) -> list[dict[str, Any]]:
    query = sql.SQL(
        "SELECT committed_at, booking_id AS booking, actor, actor_role, action, "
        'table_name AS "table", field, old_value AS old, new_value AS new, txid, {cols} '
        "FROM audit.customer_history WHERE customer_id = %(id)s AND {where} {order}"
    ).format(cols=_ENTRY_COLUMNS, where=filters.where(), order=_ORDER)
    return _fetch(dsn, query, filters, {"id": customer_id})


def actor_rows(dsn: str, who: str, filters: Filters) -> list[dict[str, Any]]:
    query = sql.SQL(
        'SELECT committed_at, actor_role, action, table_name AS "table", row_id AS "row", '
        "field, old_value AS old, new_value AS new, txid, actor, {cols} "
        "FROM audit.actor_activity WHERE lower(who) = lower(%(who)s) AND {where} {order}"
    ).format(cols=_ENTRY_COLUMNS, where=filters.where(), order=_ORDER)
    return _fetch(dsn, query, filters, {"who": who})


LOG_KEYS = (
    "committed_at", "booking", "event", "actor", "actor_role", "approval_ref", "fields", "txid",
    "booking_id", "label", "change_id", "source",
)  # fmt: skip


def log_rows(dsn: str, filters: Filters) -> list[dict[str, Any]]:
    query = sql.SQL(
        "SELECT committed_at, booking_id AS booking, event, actor, actor_role, approval_ref, "
        "fields, txid, booking_id, label, change_id, source, app_actor, db_user, reason, "
        "table_name, rescheduled, cancelled, price_changed, status_changed "
        "FROM audit.booking_history_log WHERE {where} "
        "ORDER BY committed_at, commit_lsn, sequence"
    ).format(where=filters.where(per_field=False))
    return _fetch(dsn, query, filters, {})


# The log's event for a row recorded as it stood at install (audit.booking_history_log).
BASELINE_EVENT = "existing at install"


def booking_counts(log: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per booking: entries, and how often it was rescheduled, cancelled, repriced, re-statused."""
    counts: dict[str, dict[str, Any]] = {}
    for row in log:
        c = counts.setdefault(
            row["booking_id"],
            {
                "booking_id": row["booking_id"],
                "created": 0,
                "existing": 0,
                "entries": 0,
                "reschedules": 0,
                "cancellations": 0,
                "price_changes": 0,
                "status_changes": 0,
            },
        )
        c["entries"] += 1
        c["created"] += row["event"] == "created"
        c["existing"] += row["event"] == BASELINE_EVENT
        c["reschedules"] += bool(row["rescheduled"])
        c["cancellations"] += bool(row["cancelled"])
        c["price_changes"] += bool(row["price_changed"])
        c["status_changes"] += bool(row["status_changed"])
    return sorted(counts.values(), key=lambda c: _natural(c["booking_id"]))


def actor_totals(log: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per actor: entries, bookings created and bookings touched in the period.

    Baseline entries are left out: they record what stood at install, and nobody did that.
    """
    totals: dict[str, dict[str, Any]] = {}
    touched: dict[str, set[str]] = {}
    for row in log:
        if row["event"] == BASELINE_EVENT:
            continue
        t = totals.setdefault(
            row["actor"],
            {"actor": row["actor"], "entries": 0, "bookings": 0, "created": 0,
             "reschedules": 0, "cancellations": 0, "price_changes": 0, "status_changes": 0},
        )  # fmt: skip
        t["entries"] += 1
        t["created"] += row["event"] == "created"
        t["reschedules"] += bool(row["rescheduled"])
        t["cancellations"] += bool(row["cancelled"])
        t["price_changes"] += bool(row["price_changed"])
        t["status_changes"] += bool(row["status_changed"])
        touched.setdefault(row["actor"], set()).add(row["booking_id"])
    for name, t in totals.items():
        t["bookings"] = len(touched[name])
    return sorted(totals.values(), key=lambda t: (-t["entries"], t["actor"]))


COUNT_KEYS = (
    "booking_id", "created", "existing", "entries", "reschedules", "cancellations", "price_changes",
    "status_changes",
)  # fmt: skip
TOTAL_KEYS = (
    "actor", "entries", "bookings", "created", "reschedules", "cancellations", "price_changes",
    "status_changes",
)  # fmt: skip


def day_filters(zone: tzinfo, source: str | None = None, day: date | None = None) -> Filters:
    """One whole day in `zone` (default today): the daily log's period."""
    first = day or datetime.now(zone).date()
    start = datetime.combine(first, time(), zone)
    return Filters(
        since=start, until=datetime.combine(first + timedelta(days=1), time(), zone), zone=zone
    )


def describe_period(filters: Filters) -> str:
    zone = filters.zone
    if filters.since and filters.until:
        return f"from {show_time(filters.since, zone)} to {show_time(filters.until, zone)}"
    if filters.since:
        return f"since {show_time(filters.since, zone)}"
    return "in the period"


def log_table_rows(rows: Sequence[Mapping[str, Any]], zone: tzinfo) -> list[dict[str, Any]]:
    return [
        {
            "when": show_time(r["committed_at"], zone),
            "booking": r["booking_id"],
            "event": r["event"],
            "what": r["label"],
            "by": f"{r['actor']} ({r['actor_role']})" if r["actor_role"] else r["actor"],
            "fields": r["fields"],
            "approval": r["approval_ref"] or "",
        }
        for r in rows
    ]


def render_log(
    rows: Sequence[Mapping[str, Any]],
    counts: Sequence[Mapping[str, Any]],
    totals: Sequence[Mapping[str, Any]],
    zone: tzinfo,
    period: str,
) -> str:
    """The Booking History Log as a manager reads it: entries, then counts, then totals."""
    created = sum(c["created"] for c in counts)
    modified = [c for c in counts if c["entries"] > c["created"] + c["existing"]]
    existing = sum(c["existing"] for c in counts)
    head = (
        f"Booking History Log {period}: {created} created, {len(modified)} modified, "
        + (f"{existing} existing at install, " if existing else "")
        + f"{len(rows)} entries"
    )
    return "\n\n".join(
        [
            head,
            render_table(log_table_rows(rows, zone), wide=("fields", "what")),
            "Per booking:\n" + render_table(counts),
            "Per actor:\n" + render_table(totals, wide=("actor",)),
        ]
    )


def _natural(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 62, value)


AS_OF_KEYS = ("source", "table", "row", "field", "value", "changed_at", "change_id")
DIFF_KEYS = ("source", "table", "row", "field", "at_t1", "at_t2", "changed_by", "last_changed_at")


def as_of_rows(dsn: str, booking_id: str, at: datetime, source: str | None) -> list[dict[str, Any]]:
    """One row per field of the booking and each related row, as they were at `at`."""
    with warehouse(dsn) as conn:
        chosen = resolve_source(conn, source)
        found = conn.execute(
            "SELECT * FROM audit.booking_as_of(%s, %s, %s)", (booking_id, at, chosen)
        ).fetchall()
    return [
        {
            "source": r["source"],
            "table": r["table_name"],
            "row": r["row_id"],
            "field": name,
            "value": value,
            "changed_at": r["changed_at"],
            "change_id": r["change_id"],
        }
        for r in found
        for name, value in (r["row_data"] or {}).items()
    ]


def diff_rows(
    dsn: str, booking_id: str, t1: datetime, t2: datetime, source: str | None
) -> list[dict[str, Any]]:
    with warehouse(dsn) as conn:
        chosen = resolve_source(conn, source)
        found = conn.execute(
            "SELECT * FROM audit.booking_diff(%s, %s, %s, %s)", (booking_id, t1, t2, chosen)
        ).fetchall()
    return [
        {
            "source": r["source"],
            "table": r["table_name"],
            "row": r["row_id"],
            "field": r["field"],
            "at_t1": r["value_at_t1"],
            "at_t2": r["value_at_t2"],
            "changed_by": r["changed_by"],
            "last_changed_at": r["last_changed_at"],
        }
        for r in found
    ]


# --- from per-field rows to the entries people read -----------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2}(\.\d+)?)?[+-]\d{2}(:\d{2})?$")


def show_value(value: str | None, zone: tzinfo) -> str:
    """A stored value as a person reads it: timestamps in the chosen zone, nothing as a dash."""
    if value is None:
        return "-"
    if _TIMESTAMP.match(value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return moment.astimezone(zone).strftime("%d %b %Y %H:%M")
    return value


def show_time(value: datetime, zone: tzinfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Change:
    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Entry:
    """One row change as the timeline shows it: when, who, the label, and its changed fields."""

    change_id: int
    committed_at: datetime
    booking_id: str | None
    source: str
    table: str
    row: str | None
    action: str
    label: str
    actor: str
    actor_role: str | None
    approval_ref: str | None
    reason: str | None
    txid: int
    changes: tuple[Change, ...]
    # The row's key and booking link: a new or removed row lists them only in JSON and CSV.
    link_fields: tuple[str, ...] = ()

    @property
    def shown_changes(self) -> tuple[Change, ...]:
        if self.action == "update":
            return self.changes
        return tuple(c for c in self.changes if c.field not in self.link_fields) or self.changes

    @property
    def who(self) -> str:
        return f"{self.actor} ({self.actor_role})" if self.actor_role else self.actor

    @property
    def reference(self) -> str:
        parts = [f"approval {self.approval_ref}"] if self.approval_ref else []
        return "; ".join([*parts, *([self.reason] if self.reason else [])])

    def summary(self, zone: tzinfo) -> str:
        """Updates as 'field old → new'; a new or removed row folded as 'field value'."""
        if self.action in ("insert", "delete", "existing"):
            gone = self.action == "delete"
            return ", ".join(
                f"{c.field} {show_value(c.old if gone else c.new, zone)}"
                for c in self.shown_changes
            )
        return ", ".join(
            f"{c.field} {show_value(c.old, zone)} → {show_value(c.new, zone)}" for c in self.changes
        )


def entries(rows: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """Group per-field rows (in commit order) into one entry per row change."""
    grouped: dict[int, Entry] = {}
    for r in rows:
        entry = grouped.get(r["change_id"])
        change = () if r.get("field") is None else (Change(r["field"], r["old"], r["new"]),)
        if entry is None:
            grouped[r["change_id"]] = Entry(
                change_id=r["change_id"],
                committed_at=r["committed_at"],
                booking_id=r.get("booking_id"),
                source=r["source"],
                table=r["table"],
                row=r.get("row_id"),
                action=r["action"],
                label=r["label"],
                actor=r["actor"],
                actor_role=r.get("actor_role"),
                approval_ref=r.get("approval_ref"),
                reason=r.get("reason"),
                txid=r["txid"],
                changes=change,
                link_fields=tuple(r.get("link_fields") or ()),
            )
        else:
            grouped[r["change_id"]] = Entry(**{**entry.__dict__, "changes": entry.changes + change})
    return list(grouped.values())


def timeline_table_rows(
    items: Sequence[Entry], zone: tzinfo, *, with_booking: bool = False
) -> list[dict[str, Any]]:
    return [
        {
            "when": show_time(e.committed_at, zone),
            **({"booking": e.booking_id or "-"} if with_booking else {}),
            "what": e.label,
            "by": e.who,
            "changes": e.summary(zone),
            "approval / reason": e.reference,
        }
        for e in items
    ]


def exported(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], zone: tzinfo
) -> list[dict[str, Any]]:
    """The rows JSON and CSV print: the given keys in order, times in the chosen zone."""
    return [
        {k: (r[k].astimezone(zone) if isinstance(r.get(k), datetime) else r.get(k)) for k in keys}
        for r in rows
    ]


# --- renderers: the one place output is shaped for a terminal, JSON or CSV ------------------


def _text(value: Any, *, exact: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        # Commit times are stored to the millisecond; JSON and CSV keep that, tables round.
        return value.isoformat(sep=" ", timespec="milliseconds" if exact else "seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def render_json(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(
        [
            {k: (_text(v, exact=True) if isinstance(v, date) else v) for k, v in r.items()}
            for r in rows
        ],
        indent=2,
        ensure_ascii=False,
    )


def render_csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> str:
    out = io.StringIO()
    names = list(keys if keys is not None else (rows[0] if rows else ()))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for r in rows:
        writer.writerow([_text(r.get(k), exact=True) for k in names])
    return out.getvalue().rstrip("\n")


def render_table(
    rows: Sequence[Mapping[str, Any]], max_width: int = 40, wide: Sequence[str] = ()
) -> str:
    """Aligned columns; values are escaped for the terminal and cut at `max_width`, except
    the columns named in `wide`."""
    keys = list(rows[0]) if rows else list(HISTORY_KEYS)

    def cell(key: str, value: Any) -> str:
        text = printable(_text(value))
        if key in wide or len(text) <= max_width:
            return text
        return text[: max_width - 1] + "…"

    cells = [[cell(k, r[k]) for k in keys] for r in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def booking_history(dsn: str, booking_id: str, source: str | None = None) -> list[dict[str, Any]]:
    """The booking's per-field rows, unfiltered (the demo and tests)."""
    return booking_rows(dsn, booking_id, Filters(source=source))
