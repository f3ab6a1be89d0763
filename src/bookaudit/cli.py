"""The `bookaudit` command line: builds the Config once and hands it to each stage."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg

from bookaudit._commands import config_from, log
from bookaudit.config import ENV_PREFIX, Config
from bookaudit.errors import BookauditError, ConfigError, TerminalError, TransientError
from bookaudit.model import MODES
from bookaudit.runtime import tune_collector

if TYPE_CHECKING:
    from bookaudit.warehouse.history import Filters

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


RETRY_CAP_S = 30.0


def with_retry(attempt: Callable[[], T], *, max_attempts: int | None) -> T:
    """Transient failures retry with capped exponential backoff; terminal ones go straight up.

    An attempt that ran longer than the cap before it failed meets a new outage, not the same
    one: the backoff starts again at 1 s, or a long-lived process would wait the full cap after
    every blip once it had seen a few.
    """
    delay = 1.0
    tries = 0
    while True:
        tries += 1
        started = time.monotonic()
        try:
            return attempt()
        except TransientError as exc:
            if max_attempts is not None and tries >= max_attempts:
                raise
            if time.monotonic() - started > RETRY_CAP_S:
                delay, tries = 1.0, 1
            log(f"bookaudit: {exc} (retry {tries} in {delay:.0f}s)")
            time.sleep(delay)
            delay = min(delay * 2, RETRY_CAP_S)


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BookauditError as exc:
            # libpq and librdkafka messages span lines; the contract is one line per error.
            click.echo(f"bookaudit: error: {' '.join(str(exc).split())}", err=True)
            sys.exit(75 if isinstance(exc, TransientError) else 2)

    return wrapper


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return _handle_errors(super().invoke)(ctx)


class _Setting(click.Option):
    """An option that sets a Config field: its help names the field's env var (click's
    show_envvar), but the Config reads the env, not click, so flags, env and the TOML file keep
    one order of precedence and one set of checks."""

    def __init__(self, *args: Any, setting: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = setting or self.name
        if field not in SETTINGS:
            raise TypeError(f"option {self.name!r} names no Config field")
        self.envvar = ENV_PREFIX + field.upper()
        self.show_envvar = True

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        return None


SETTINGS = frozenset(f.name for f in fields(Config))


def _setting(*decls: str, **kwargs: Any) -> Decorator:
    """click.option for a Config field (see _Setting)."""
    return click.option(*decls, cls=_Setting, **kwargs)


# The one --format: tables for people, JSON and CSV with every value exact.
_format_option: Decorator = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table for people; json and csv print every value exactly",
)


def _connection_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = {
        "source_dsn": _setting("--source-dsn", "--dsn", "source_dsn", help="bookings database"),
        "warehouse_dsn": _setting("--warehouse-dsn", help="audit warehouse"),
        "kafka_bootstrap": _setting("--kafka-bootstrap", help="Kafka bootstrap servers"),
        "slot": _setting("--slot", help="replication slot"),
        "publication": _setting("--publication", help="publication"),
        "topic_prefix": _setting("--topic-prefix", help="topic prefix"),
        "mode": _setting(
            "--mode",
            type=click.Choice(MODES),
            help="logical decoding, or triggers + outbox where wal_level=logical is unavailable "
            "(default logical)",
        ),
    }

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            fn = options[name](fn)
        return fn

    return decorate


@click.group(cls=_Group)
@click.option(
    "--config", type=click.Path(dir_okay=False), help="TOML file (default ./bookaudit.toml)"
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="threshold for library log lines (librdkafka's among them)",
)
@click.version_option(package_name="bookaudit")
def main(config: str | None, log_level: str) -> None:
    """Booking history and audit log: Postgres → Kafka → audit warehouse."""
    from bookaudit.classify import setup_logging

    setup_logging(log_level.upper())


# --- source ---------------------------------------------------------------------------------


@main.group()
def source() -> None:
    """Install or remove the audit hooks in the bookings database."""


@source.command("install")
@_connection_options("source_dsn", "publication", "slot", "mode")
@_setting("--table", "tables", multiple=True, help="schema.table to audit (repeatable)")
@_setting(
    "--snapshot",
    type=click.Choice(["initial", "never"]),
    help="initial: record the rows that exist now as a baseline (default); never: only changes",
)
@click.option(
    "--grant-to",
    "grant_to",
    multiple=True,
    metavar="ROLE",
    help="application role that may call bookaudit.set_actor (repeatable; PUBLIC for all). "
    "Writing audited tables needs no grant.",
)
@click.option("--dry-run", is_flag=True, help="print the SQL instead of running it")
@click.pass_context
def source_install(
    ctx: click.Context,
    /,
    tables: tuple[str, ...],
    grant_to: tuple[str, ...],
    dry_run: bool,
    **flags: Any,
) -> None:
    """Context API and triggers; a publication, REPLICA IDENTITY FULL and the replication slot,
    or (--mode trigger) an outbox with row triggers. The audit is complete from the moment this
    returns; existing rows are staged as a baseline for the capture."""
    from bookaudit.entity_map import default_map
    from bookaudit.source.audit_start import check_replication, install, planned_start
    from bookaudit.source.install import TableName, plan_install, render

    cfg = config_from(ctx, tables=tables, **flags)
    source_dsn = cfg.need("source_dsn")
    names = [TableName.parse(t) for t in cfg.tables]
    if not names and cfg.entity_map != default_map():
        # A bookaudit.toml with its own [map] already says which tables make up the bookings.
        names = [TableName(t.schema, t.name) for t in cfg.entity_map.tables]
    if dry_run:
        with _connect(source_dsn, "source") as conn:
            if cfg.mode == "logical":
                check_replication(conn, cfg.slot)
            click.echo(render(conn, plan_install(conn, names, cfg.publication, cfg.mode, grant_to)))
            for line in planned_start(conn, cfg.slot, cfg.mode, cfg.snapshot):
                click.echo(f"-- then {line}")
        return
    try:
        started = install(
            source_dsn,
            names,
            publication=cfg.publication,
            slot=cfg.slot,
            mode=cfg.mode,
            snapshot=cfg.snapshot,
            grant_to=grant_to,
            progress=lambda m: log(f"  {m}"),
        )
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the source database: {str(exc).strip()}") from None
    where = "the outbox" if cfg.mode == "trigger" else f"publication {cfg.publication!r}"
    log(f"source: auditing {', '.join(map(str, names))} in {where} ({cfg.mode} mode)")
    click.echo(f"source: {started.describe()}")


@source.command("uninstall")
@_connection_options("source_dsn", "publication", "slot")
@click.option("--dry-run", is_flag=True, help="print the SQL instead of running it")
@click.pass_context
def source_uninstall(ctx: click.Context, /, dry_run: bool, **flags: Any) -> None:
    """Drop the slot, the publication, the triggers and the bookaudit schema."""
    from bookaudit.source.install import apply, plan_uninstall, render

    cfg = config_from(ctx, **flags)
    source_dsn = cfg.need("source_dsn")
    with _connect(source_dsn, "source") as conn:
        statements = plan_uninstall(conn, cfg.publication, cfg.slot)
        if dry_run:
            click.echo(render(conn, statements))
            return
        apply(conn, statements, lambda m: log(f"  {m}"))
    log("source: bookaudit removed")


def _connect(dsn: str, what: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the {what} database: {str(exc).strip()}") from None


# --- capture --------------------------------------------------------------------------------


@main.command()
@_connection_options("source_dsn", "kafka_bootstrap", "slot", "publication", "topic_prefix", "mode")
@click.option("--exit-when-idle", is_flag=True, help="stop once every committed change is in Kafka")
@click.option(
    "--accept-gap",
    is_flag=True,
    help="when the slot was lost: create a new one from now and record the gap in the audit",
)
@click.pass_context
def capture(ctx: click.Context, /, exit_when_idle: bool, accept_gap: bool, **flags: Any) -> None:
    """Stream the slot (or relay the outbox) to Kafka, releasing only what Kafka acknowledged."""
    from bookaudit.cdc.capture import Capture
    from bookaudit.cdc.relay import OutboxRelay
    from bookaudit.cdc.settings import settings_from

    cfg = config_from(ctx, **flags)
    settings = settings_from(cfg, exit_when_idle=exit_when_idle, accept_gap=accept_gap)
    runner = OutboxRelay if cfg.mode == "trigger" else Capture
    tune_collector()
    with_retry(lambda: runner(settings, log).run(), max_attempts=5 if exit_when_idle else None)


# --- warehouse and consumers ----------------------------------------------------------------


@main.group()
def warehouse() -> None:
    """Manage the audit warehouse."""


@warehouse.command("init")
@_connection_options("warehouse_dsn")
@click.option("--dsn", "warehouse_dsn_alias", help="same as --warehouse-dsn")
@click.pass_context
def warehouse_init(ctx: click.Context, /, warehouse_dsn_alias: str | None, **flags: Any) -> None:
    """Create (or upgrade) the append-only audit schema."""
    from bookaudit.entity_map import default_map
    from bookaudit.warehouse.schema import init_warehouse

    if warehouse_dsn_alias:
        flags["warehouse_dsn"] = warehouse_dsn_alias
    cfg = config_from(ctx, **flags)
    warehouse_dsn = cfg.need("warehouse_dsn")
    own = cfg.entity_map != default_map()
    init_warehouse(warehouse_dsn, {cfg.source_name: cfg.entity_map} if own else None, log)
    mapped = f"; source {cfg.source_name!r} uses {cfg.entity_map.origin}" if own else ""
    log(f"warehouse: audit schema ready{mapped}")


@warehouse.command("verify")
@_connection_options("warehouse_dsn")
@click.pass_context
def warehouse_verify(ctx: click.Context, /, **flags: Any) -> None:
    """Recompute the hash chains (audit rows, alerts); exit 1 and list every tampered row if
    either does not hold."""
    from bookaudit.warehouse.verify import verify_alert_chain, verify_chain

    cfg = config_from(ctx, **flags)
    warehouse_dsn = cfg.need("warehouse_dsn")
    from bookaudit.warehouse.gaps import list_gaps

    report = verify_chain(warehouse_dsn)
    alerts = verify_alert_chain(warehouse_dsn)
    for problem in report.problems + alerts.problems:
        click.echo(f"TAMPERED: {problem}")
    # An accepted gap is not tampering (the chain holds), but the audit is not complete there.
    for gap in list_gaps(warehouse_dsn):
        click.echo(f"GAP: {gap}")
    if not (report.intact and alerts.intact):
        sys.exit(1)
    # Recording the heads elsewhere also catches a cut-off tail, which no chain can see alone.
    click.echo(f"intact: {report.entries} audit rows chained, head {report.head or '-'}")
    click.echo(f"intact: {alerts.entries} alerts chained, head {alerts.head or '-'}")
    if report.legacy:
        click.echo(
            f"note: {report.legacy} older audit rows are in audit.chain_v1, an earlier release's "
            "per-row chain, which this verify does not recompute"
        )


@warehouse.command("sources")
@_connection_options("warehouse_dsn")
@click.option(
    "--release",
    "release_name",
    metavar="NAME",
    help="forget which database NAME belongs to (after a restore or migration): the next "
    "writer binds it to the database its events then come from",
)
@click.pass_context
def warehouse_sources(ctx: click.Context, /, release_name: str | None, **flags: Any) -> None:
    """List which source database each source name belongs to. Events under a name from any
    other database are dead-lettered, never mixed in."""
    from bookaudit.terminal import printable
    from bookaudit.warehouse.sources import list_bindings, release

    cfg = config_from(ctx, **flags)
    warehouse_dsn = cfg.need("warehouse_dsn")
    if release_name is not None:
        was = release(warehouse_dsn, release_name)
        if was is None:
            raise click.ClickException(f"source {release_name!r} is not bound in this warehouse")
        log(f"warehouse: source {release_name!r} released from database {was!r}")
        return
    bindings = list_bindings(warehouse_dsn)
    if not bindings:
        log("warehouse: no source has written here yet")
    for b in bindings:
        click.echo(
            f"{printable(b.name)}\t{printable(b.identity)}\t"
            f"bound {b.bound_at.isoformat(timespec='seconds')}\t{b.entries} entries"
        )


@main.group()
def consume() -> None:
    """Run a consumer group."""


@consume.command("audit")
@_connection_options("warehouse_dsn", "kafka_bootstrap", "topic_prefix")
@_setting("--group-id", help="consumer group (default bookaudit-audit)")
@_setting("--batch-size", type=int, help="records per warehouse transaction")
@click.option("--exit-when-idle", is_flag=True, help="stop once every partition is read to its end")
@click.pass_context
def consume_audit(ctx: click.Context, /, exit_when_idle: bool, **flags: Any) -> None:
    """Write audit entries with old and new values to the warehouse."""
    from bookaudit.consumers.audit.job import AuditWriter, settings_from

    settings, dsn = settings_from(config_from(ctx, **flags))
    tune_collector()
    with_retry(
        lambda: AuditWriter(settings, dsn, log).run(exit_when_idle),
        max_attempts=5 if exit_when_idle else None,
    )


@consume.command("alerts")
@_connection_options("warehouse_dsn", "kafka_bootstrap", "topic_prefix")
@_setting("--rules", "alerts_rules", help="TOML rule file")
@_setting("--webhook", "alerts_webhook", help="also POST each alert here")
@_setting("--group-id", "alerts_group_id", help="consumer group (default bookaudit-alerts)")
@_setting("--batch-size", type=int, help="records per warehouse transaction")
@click.option("--no-stdout", is_flag=True, help="do not print alerts as JSON lines")
@click.option("--exit-when-idle", is_flag=True, help="stop once every partition is read to its end")
@click.pass_context
def consume_alerts(
    ctx: click.Context, /, exit_when_idle: bool, no_stdout: bool, **flags: Any
) -> None:
    """Raise alerts on unapproved changes: audit.alerts, <prefix>.alerts, stdout, webhook."""
    from bookaudit.consumers.alerts.job import AlertsJob, settings_from
    from bookaudit.consumers.alerts.rulefile import load_rules

    cfg = config_from(ctx, **flags)
    rules = load_rules(cfg.alerts_rules, cfg.entity_map)
    settings = settings_from(cfg, rules)

    def out(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()  # a JSON line is an event: a pipe reader should see it now

    with_retry(
        lambda: AlertsJob(settings, rules, log, None if no_stdout else out).run(exit_when_idle),
        max_attempts=5 if exit_when_idle else None,
    )


# --- entity map -----------------------------------------------------------------------------


@main.group("map")
def map_() -> None:
    """Check or apply the entity map ([map] in bookaudit.toml; the sample schema's by default)."""


@map_.command("check")
@_connection_options("source_dsn")
@click.pass_context
def map_check(ctx: click.Context, /, **flags: Any) -> None:
    """Check every table, column and key the map names against the source; one line a mistake."""
    from bookaudit.source.map_check import check_map, read_catalog

    cfg = config_from(ctx, **flags)
    source_dsn = cfg.need("source_dsn")
    entity_map = cfg.entity_map
    with _connect(source_dsn, "source") as conn:
        problems = check_map(entity_map, read_catalog(conn, entity_map.tables))
    for problem in problems:
        click.echo(f"{entity_map.origin}: {problem}")
    if problems:
        sys.exit(1)
    kinds = ", ".join(f"{e.kind} {e.table}" for e in entity_map.entities)
    click.echo(f"map ok ({entity_map.origin}): {kinds}")


@map_.command("apply")
@_connection_options("warehouse_dsn")
@_setting("--source", "source_name", help="the source this map is for")
@click.pass_context
def map_apply(ctx: click.Context, /, **flags: Any) -> None:
    """Store the map in the warehouse for one source: its views answer with it from now on."""
    from bookaudit.warehouse._connect import warehouse as connect_warehouse
    from bookaudit.warehouse.mapping import apply_map

    cfg = config_from(ctx, **flags)
    warehouse_dsn = cfg.need("warehouse_dsn")
    with connect_warehouse(warehouse_dsn) as conn:
        changed = apply_map(conn, cfg.source_name, cfg.entity_map, log)
    same = "" if changed else " (unchanged)"
    log(f"map: source {cfg.source_name!r} now reads with {cfg.entity_map.origin}{same}")


# --- read back ------------------------------------------------------------------------------


@main.group()
def history() -> None:
    """Read audit history back: labelled timelines, as-of, diff and the booking history log."""


_source_option = _setting(
    "--source", help="which source's rows; required when several feed the warehouse"
)


def _history_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every history command takes, in one place."""
    options: list[Decorator] = [
        click.option("--since", help="from this date or timestamp (read in --tz), inclusive"),
        click.option("--until", help="up to this date (the whole day) or timestamp"),
        click.option("--tz", help="time zone to read and show times in (default: this machine's)"),
        click.option("--field", "fields", multiple=True, help="only entries changing FIELD"),
        click.option("--actor", "actors", multiple=True, help="only entries by this actor or db role"),
        click.option("--label", "labels", multiple=True, help="only entries whose label contains this"),
        _format_option,
        _source_option,
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return _connection_options("warehouse_dsn")(fn)


def _filters(opts: dict[str, Any], *, default_since: str | None = None) -> tuple[Filters, Any]:
    from bookaudit.warehouse.history import Filters, parse_moment, parse_zone

    zone = parse_zone(opts.pop("tz"))
    since_text = opts.pop("since") or default_since
    until_text = opts.pop("until")
    since = parse_moment(since_text, zone, "--since") if since_text else None
    if until_text:
        until = parse_moment(until_text, zone, "--until", end_of_day=True)
    elif default_since and since is not None:
        until = parse_moment(since_text or "", zone, "--since", end_of_day=True)
    else:
        until = None
    if since and until and until <= since:
        raise ConfigError(f"--until {until_text} is not after --since {since_text}")
    filters = Filters(
        since=since,
        until=until,
        fields=tuple(opts.pop("fields")),
        actors=tuple(opts.pop("actors")),
        labels=tuple(opts.pop("labels")),
        source=opts.pop("source"),
        zone=zone,
    )
    return filters, zone


def _emit(
    fmt: str,
    table: Callable[[], str],
    export: list[dict[str, Any]],
    keys: Sequence[str],
    empty: str,
) -> None:
    """JSON and CSV print every row exactly; the table is for people. Nothing found: one line."""
    from bookaudit.warehouse.history import render_csv, render_json

    if not export:
        log(empty)
    if fmt == "json":
        click.echo(render_json(export))
    elif fmt == "csv":
        # color=True: click would otherwise strip ANSI sequences from the values when stdout is
        # not a terminal, and CSV must keep every value exactly as written.
        click.echo(render_csv(export, keys), color=True)
    elif export:
        click.echo(table())


def _warehouse_dsn(ctx: click.Context, flags: dict[str, Any]) -> str:
    """The warehouse DSN; --source falls back to BOOKAUDIT_SOURCE and the TOML file."""
    cfg = config_from(
        ctx, warehouse_dsn=flags.pop("warehouse_dsn", None), source=flags.pop("source")
    )
    warehouse_dsn = cfg.need("warehouse_dsn")
    flags["source"] = cfg.source
    from bookaudit.warehouse.gaps import list_gaps

    for gap in list_gaps(warehouse_dsn, cfg.source):
        log(f"history: note: audit gap: {gap}")
    return warehouse_dsn


def _timeline(
    rows: list[dict[str, Any]],
    zone: Any,
    keys: Sequence[str],
    fmt: str,
    empty: str,
    *,
    with_booking: bool = False,
) -> None:
    from bookaudit.warehouse.history import entries, exported, render_table, timeline_table_rows

    def table() -> str:
        shown = timeline_table_rows(entries(rows), zone, with_booking=with_booking)
        return render_table(shown, wide=("changes", "approval / reason"))

    _emit(fmt, table, exported(rows, keys, zone), keys, empty)


@history.command("booking")
@click.argument("booking_id")
@click.option("--as-of", "as_of", help="show the booking and its related rows as they were then")
@click.option("--diff", nargs=2, metavar="T1 T2", help="what changed between two moments")
@_history_options
@click.pass_context
def history_booking(
    ctx: click.Context, /, booking_id: str, as_of: str | None, diff: tuple[str, str] | None,
    **opts: Any,
) -> None:  # fmt: skip
    """A booking's labelled timeline, oldest first, with its invoices, payments, assignments
    and notes; or its state --as-of a moment, or the --diff between two."""
    from bookaudit.warehouse import history as h

    dsn = _warehouse_dsn(ctx, opts)
    fmt = opts.pop("fmt")
    filters, zone = _filters(opts)
    if as_of and diff:
        raise ConfigError("--as-of and --diff cannot be combined: choose one")
    if as_of:
        at = h.parse_moment(as_of, zone, "--as-of")
        state = h.as_of_rows(dsn, booking_id, at, filters.source)
        shown = [{**r, "value": h.show_value(r["value"], zone)} for r in state]
        _emit(
            fmt,
            lambda: h.render_table(
                [{k: r[k] for k in ("table", "row", "field", "value")} for r in shown],
                wide=("value",),
            ),
            h.exported(state, h.AS_OF_KEYS, zone),
            h.AS_OF_KEYS,
            f"booking {booking_id} did not exist at {h.show_time(at, zone)}",
        )
        return
    if diff:
        t1 = h.parse_moment(diff[0], zone, "--diff")
        t2 = h.parse_moment(diff[1], zone, "--diff")
        changed = h.diff_rows(dsn, booking_id, t1, t2, filters.source)

        def table() -> str:
            return h.render_table(
                [
                    {
                        "table": r["table"], "row": r["row"], "field": r["field"],
                        h.show_time(t1, zone): h.show_value(r["at_t1"], zone),
                        h.show_time(t2, zone): h.show_value(r["at_t2"], zone),
                        "changed by": r["changed_by"] or "",
                    }
                    for r in changed
                ],
                wide=(h.show_time(t1, zone), h.show_time(t2, zone)),
            )  # fmt: skip

        _emit(
            fmt, table, h.exported(changed, h.DIFF_KEYS, zone), h.DIFF_KEYS,
            f"booking {booking_id}: nothing changed between {diff[0]} and {diff[1]}",
        )  # fmt: skip
        return
    rows = h.booking_rows(dsn, booking_id, filters)
    keys = h.BOOKING_EXPORT_KEYS
    _timeline(rows, zone, keys, fmt, f"history: no audit entries for booking {booking_id}")


@history.command("customer")
@click.argument("customer_id")
@_history_options
@click.pass_context
def history_customer(ctx: click.Context, /, customer_id: str, **opts: Any) -> None:
    """A customer's record and every booking of theirs, oldest first."""
    from bookaudit.warehouse import history as h

    dsn = _warehouse_dsn(ctx, opts)
    fmt = opts.pop("fmt")
    filters, zone = _filters(opts)
    rows = h.customer_rows(dsn, customer_id, filters)
    keys = h.CUSTOMER_EXPORT_KEYS
    _timeline(
        rows, zone, keys, fmt, f"history: no audit entries for customer {customer_id}",
        with_booking=True,
    )  # fmt: skip


@history.command("actor")
@click.argument("name")
@_history_options
@click.pass_context
def history_actor(ctx: click.Context, /, name: str, **opts: Any) -> None:
    """What one user or fieldworker changed (or a db role, for changes with no actor set)."""
    from bookaudit.warehouse import history as h

    dsn = _warehouse_dsn(ctx, opts)
    fmt = opts.pop("fmt")
    filters, zone = _filters(opts)
    rows = h.actor_rows(dsn, name, filters)
    keys = h.ACTOR_EXPORT_KEYS
    _timeline(rows, zone, keys, fmt, f"history: no audit entries by {name}", with_booking=True)


@history.command("log")
@click.option(
    "--per",
    type=click.Choice(["entry", "booking", "actor"]),
    help="JSON/CSV: the entries (default), the per-booking counts, or the per-actor totals",
)
@_history_options
@click.pass_context
def history_log(ctx: click.Context, /, per: str | None, **opts: Any) -> None:
    """The Booking History Log: bookings created and modified in the period (default today),
    with who and what, per-booking counts and per-actor totals."""
    from bookaudit.warehouse import history as h

    dsn = _warehouse_dsn(ctx, opts)
    fmt = opts.pop("fmt")
    today = datetime.now(h.parse_zone(opts["tz"])).date().isoformat()
    filters, zone = _filters(opts, default_since=today)
    rows = h.log_rows(dsn, filters)
    period = h.describe_period(filters)
    counts = h.booking_counts(rows)
    totals = h.actor_totals(rows)
    if fmt != "table" or per is not None:
        if per == "booking":
            keys: Sequence[str] = h.COUNT_KEYS
            export = counts
        elif per == "actor":
            keys, export = h.TOTAL_KEYS, totals
        else:
            keys, export = h.LOG_KEYS, h.exported(rows, h.LOG_KEYS, zone)
        fmt = "csv" if fmt == "csv" else "json" if fmt == "json" else "table"
        _emit(
            fmt, lambda: h.render_table(export), export, keys,
            f"log: no booking created or modified {period}",
        )  # fmt: skip
        return
    if not rows:
        log(f"log: no booking created or modified {period}")
        return
    click.echo(h.render_log(rows, counts, totals, zone, period))


@main.command()
@_connection_options("warehouse_dsn")
@_setting("--host", setting="serve_host", help="address to listen on (default 127.0.0.1)")
@_setting("--port", setting="serve_port", type=int, help="port (default 8765)")
@_source_option
@click.pass_context
def serve(ctx: click.Context, /, host: str | None, port: int | None, **flags: Any) -> None:
    """The read-only web pages: timelines with as-of, diff and evidence, the log, alerts."""
    import waitress

    from bookaudit.web.app import create_app
    from bookaudit.web.serve import READER_ROLE, check_read_only, settings_from

    settings = settings_from(config_from(ctx, **flags), host=host, port=port)
    check_read_only(settings.reader_dsn)
    log(f"serve: {settings.url} (reading as {READER_ROLE}, read-only)")
    waitress.serve(create_app(settings), host=settings.host, port=settings.port, threads=4)


@main.group()
def alerts() -> None:
    """Read recorded alerts back, and check a rule file."""


@alerts.command("list")
@_connection_options("warehouse_dsn")
@_source_option
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    help="only changes committed at or after this time (UTC)",
)
@click.option("--booking", help="only this booking's alerts")
@click.option("--rule", help="only this rule's alerts")
@_format_option
@click.pass_context
def alerts_list(
    ctx: click.Context,
    /,
    since: datetime | None,
    booking: str | None,
    rule: str | None,
    fmt: str,
    **flags: Any,
) -> None:
    """Alerts in commit order, each with the audit entry it refers to."""
    from bookaudit.warehouse.alerts import (
        ALERT_KEYS,
        list_alerts,
        render_alerts_json,
        render_alerts_table,
    )
    from bookaudit.warehouse.history import render_csv

    cfg = config_from(ctx, **flags)
    warehouse_dsn = cfg.need("warehouse_dsn")
    start = None if since is None else since.replace(tzinfo=UTC)
    rows = list_alerts(warehouse_dsn, since=start, booking=booking, rule=rule, source=cfg.source)
    if not rows and fmt == "table":
        log("no alerts")
        return
    if fmt == "csv":
        click.echo(render_csv([{k: r[k] for k in ALERT_KEYS} for r in rows], ALERT_KEYS))
        return
    click.echo(render_alerts_json(rows) if fmt == "json" else render_alerts_table(rows))


@alerts.command("rules")
@_setting("--rules", "alerts_rules", help="TOML rule file")
@click.pass_context
def alerts_rules(ctx: click.Context, /, **flags: Any) -> None:
    """Check a rule file and show the rules the alerts consumer would apply."""
    from bookaudit.consumers.alerts.rulefile import describe, load_rules

    cfg = config_from(ctx, **flags)
    click.echo("\n".join(describe(load_rules(cfg.alerts_rules, cfg.entity_map))))


def _register_optional() -> None:
    from bookaudit.demo.cli import demo

    main.add_command(demo)


_register_optional()
