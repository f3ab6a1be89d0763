"""The `bookaudit` command line: builds the Config once and hands it to each stage."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from bookaudit.config import Config, load_config
from bookaudit.errors import BookauditError, ConfigError, TerminalError, TransientError

T = TypeVar("T")


def log(message: str) -> None:
    click.echo(message, err=True)


def _config(ctx: click.Context, /, **flags: Any) -> Config:
    toml = ctx.find_root().params.get("config")
    return load_config(flags=flags, toml_path=Path(toml) if toml else None)


def with_retry(attempt: Callable[[], T], *, max_attempts: int | None) -> T:
    """Transient failures retry with capped exponential backoff; terminal ones go straight up."""
    delay = 1.0
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except TransientError as exc:
            if max_attempts is not None and tries >= max_attempts:
                raise
            log(f"bookaudit: {exc} (retry {tries} in {delay:.0f}s)")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


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


def _connection_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = {
        "source_dsn": click.option(
            "--source-dsn", "--dsn", "source_dsn", help="bookings database (BOOKAUDIT_SOURCE_DSN)"
        ),
        "warehouse_dsn": click.option(
            "--warehouse-dsn", help="audit warehouse (BOOKAUDIT_WAREHOUSE_DSN)"
        ),
        "kafka_bootstrap": click.option(
            "--kafka-bootstrap", help="Kafka bootstrap servers (BOOKAUDIT_KAFKA_BOOTSTRAP)"
        ),
        "slot": click.option("--slot", help="replication slot (BOOKAUDIT_SLOT)"),
        "publication": click.option("--publication", help="publication (BOOKAUDIT_PUBLICATION)"),
        "topic_prefix": click.option(
            "--topic-prefix", help="topic prefix (BOOKAUDIT_TOPIC_PREFIX)"
        ),
        "mode": click.option(
            "--mode",
            type=click.Choice(["logical", "trigger"]),
            help="logical decoding, or triggers + outbox where wal_level=logical is unavailable "
            "(BOOKAUDIT_MODE, default logical)",
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
@click.version_option(package_name="bookaudit")
def main(config: str | None) -> None:
    """Booking history and audit log: Postgres → Kafka → audit warehouse."""


# --- source ---------------------------------------------------------------------------------


@main.group()
def source() -> None:
    """Install or remove the audit hooks in the bookings database."""


@source.command("install")
@_connection_options("source_dsn", "publication", "mode")
@click.option("--table", "tables", multiple=True, help="schema.table to audit (repeatable)")
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
    """Context API and triggers; a publication and REPLICA IDENTITY FULL, or (--mode trigger)
    an outbox with row triggers."""
    from bookaudit.source.install import TableName, apply, plan_install, render

    cfg = _config(ctx, tables=tables, **flags)
    cfg.require("source_dsn")
    names = [TableName.parse(t) for t in cfg.tables]
    assert cfg.source_dsn is not None
    with _connect(cfg.source_dsn, "source") as conn:
        statements = plan_install(conn, names, cfg.publication, cfg.mode, grant_to)
        if dry_run:
            click.echo(render(conn, statements))
            return
        apply(conn, statements, lambda m: log(f"  {m}"))
    where = "the outbox" if cfg.mode == "trigger" else f"publication {cfg.publication!r}"
    log(f"source: auditing {', '.join(map(str, names))} in {where} ({cfg.mode} mode)")


@source.command("uninstall")
@_connection_options("source_dsn", "publication", "slot")
@click.option("--dry-run", is_flag=True, help="print the SQL instead of running it")
@click.pass_context
def source_uninstall(ctx: click.Context, /, dry_run: bool, **flags: Any) -> None:
    """Drop the slot, the publication, the triggers and the bookaudit schema."""
    from bookaudit.source.install import apply, plan_uninstall, render

    cfg = _config(ctx, **flags)
    cfg.require("source_dsn")
    assert cfg.source_dsn is not None
    with _connect(cfg.source_dsn, "source") as conn:
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
@click.pass_context
def capture(ctx: click.Context, /, exit_when_idle: bool, **flags: Any) -> None:
    """Stream the slot (or relay the outbox) to Kafka, releasing only what Kafka acknowledged."""
    from bookaudit.cdc.capture import Capture, settings_from
    from bookaudit.cdc.relay import OutboxRelay

    cfg = _config(ctx, **flags)
    settings = settings_from(cfg, exit_when_idle=exit_when_idle)
    runner = OutboxRelay if cfg.mode == "trigger" else Capture
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
    from bookaudit.warehouse.schema import init_warehouse

    if warehouse_dsn_alias:
        flags["warehouse_dsn"] = warehouse_dsn_alias
    cfg = _config(ctx, **flags)
    cfg.require("warehouse_dsn")
    assert cfg.warehouse_dsn is not None
    init_warehouse(cfg.warehouse_dsn)
    log("warehouse: audit schema ready")


@warehouse.command("verify")
@_connection_options("warehouse_dsn")
@click.pass_context
def warehouse_verify(ctx: click.Context, /, **flags: Any) -> None:
    """Recompute the hash chain; exit 1 and list every tampered row if it does not hold."""
    from bookaudit.warehouse.verify import verify_chain

    cfg = _config(ctx, **flags)
    cfg.require("warehouse_dsn")
    assert cfg.warehouse_dsn is not None
    report = verify_chain(cfg.warehouse_dsn)
    for problem in report.problems:
        click.echo(f"TAMPERED: {problem}")
    if not report.intact:
        sys.exit(1)
    # Recording the head elsewhere also catches a cut-off tail, which no chain can see alone.
    click.echo(f"intact: {report.entries} audit rows chained, head {report.head or '-'}")


@main.group()
def consume() -> None:
    """Run a consumer group."""


@consume.command("audit")
@_connection_options("warehouse_dsn", "kafka_bootstrap", "topic_prefix")
@click.option("--group-id", help="consumer group (default bookaudit-audit)")
@click.option("--batch-size", type=int, help="records per warehouse transaction")
@click.option("--exit-when-idle", is_flag=True, help="stop once every partition is read to its end")
@click.pass_context
def consume_audit(ctx: click.Context, /, exit_when_idle: bool, **flags: Any) -> None:
    """Write audit entries with old and new values to the warehouse."""
    from bookaudit.consumers.audit.job import AuditWriter, settings_from

    settings, dsn = settings_from(_config(ctx, **flags))
    with_retry(
        lambda: AuditWriter(settings, dsn, log).run(exit_when_idle),
        max_attempts=5 if exit_when_idle else None,
    )


@consume.command("alerts")
@_connection_options("warehouse_dsn", "kafka_bootstrap", "topic_prefix")
@click.option("--rules", "alerts_rules", help="TOML rule file (BOOKAUDIT_ALERTS_RULES)")
@click.option(
    "--webhook", "alerts_webhook", help="also POST each alert here (BOOKAUDIT_ALERTS_WEBHOOK)"
)
@click.option("--group-id", "alerts_group_id", help="consumer group (default bookaudit-alerts)")
@click.option("--batch-size", type=int, help="records per warehouse transaction")
@click.option("--no-stdout", is_flag=True, help="do not print alerts as JSON lines")
@click.option("--exit-when-idle", is_flag=True, help="stop once every partition is read to its end")
@click.pass_context
def consume_alerts(
    ctx: click.Context, /, exit_when_idle: bool, no_stdout: bool, **flags: Any
) -> None:
    """Raise alerts on unapproved changes: audit.alerts, <prefix>.alerts, stdout, webhook."""
    from bookaudit.consumers.alerts.config import load_rules
    from bookaudit.consumers.alerts.job import AlertsJob, settings_from

    cfg = _config(ctx, **flags)
    rules = load_rules(cfg.alerts_rules)
    settings = settings_from(cfg, rules)

    def out(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()  # a JSON line is an event: a pipe reader should see it now

    with_retry(
        lambda: AlertsJob(settings, rules, log, None if no_stdout else out).run(exit_when_idle),
        max_attempts=5 if exit_when_idle else None,
    )


# --- read back ------------------------------------------------------------------------------


@main.group()
def history() -> None:
    """Read audit history back."""


def _print_report(report_name: str, rows: list[dict[str, Any]], fmt: str, empty: str) -> None:
    from bookaudit.warehouse.history import render_json, render_table

    if fmt == "json":
        click.echo(render_json(rows))
    elif rows:
        click.echo(render_table(rows))
    else:
        log(f"{report_name}: {empty}")


_format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def _warehouse_dsn(ctx: click.Context, flags: dict[str, Any]) -> str:
    cfg = _config(ctx, **flags)
    cfg.require("warehouse_dsn")
    assert cfg.warehouse_dsn is not None
    return cfg.warehouse_dsn


@history.command("booking")
@click.argument("booking_id")
@_connection_options("warehouse_dsn")
@_format_option
@click.pass_context
def history_booking(ctx: click.Context, /, booking_id: str, fmt: str, **flags: Any) -> None:
    """A booking's entries, oldest first, with its invoices, payments, assignments and notes."""
    from bookaudit.warehouse.history import BOOKING, run_report

    rows = run_report(_warehouse_dsn(ctx, flags), BOOKING, {"id": booking_id})
    _print_report("history", rows, fmt, f"no audit entries for booking {booking_id}")


@history.command("customer")
@click.argument("customer_id")
@_connection_options("warehouse_dsn")
@_format_option
@click.pass_context
def history_customer(ctx: click.Context, /, customer_id: str, fmt: str, **flags: Any) -> None:
    """A customer's record and every booking of theirs, oldest first."""
    from bookaudit.warehouse.history import CUSTOMER, run_report

    rows = run_report(_warehouse_dsn(ctx, flags), CUSTOMER, {"id": customer_id})
    _print_report("history", rows, fmt, f"no audit entries for customer {customer_id}")


@history.command("log")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="first day (UTC), default today")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="last day (UTC), default --since")
@_connection_options("warehouse_dsn")
@_format_option
@click.pass_context
def history_log(
    ctx: click.Context, /, since: datetime | None, until: datetime | None, fmt: str, **flags: Any
) -> None:
    """The booking history log: bookings created, modified and deleted, day by day."""
    from bookaudit.warehouse.history import BOOKING_LOG, run_report

    first = since.date() if since else datetime.now(UTC).date()
    last = until.date() if until else first
    if last < first:
        raise ConfigError(f"--until {last} is before --since {first}")
    rows = run_report(_warehouse_dsn(ctx, flags), BOOKING_LOG, {"since": first, "until": last})
    _print_report("log", rows, fmt, f"no booking created or modified from {first} to {last}")


@history.command("actor")
@click.argument("name")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="first day (UTC), default all")
@_connection_options("warehouse_dsn")
@_format_option
@click.pass_context
def history_actor(
    ctx: click.Context, /, name: str, since: datetime | None, fmt: str, **flags: Any
) -> None:
    """What one user or fieldworker changed (or a db role, for changes with no actor set)."""
    from bookaudit.warehouse.history import ACTOR, run_report

    start = since.replace(tzinfo=UTC) if since else datetime(1970, 1, 1, tzinfo=UTC)
    rows = run_report(_warehouse_dsn(ctx, flags), ACTOR, {"who": name, "since": start})
    _print_report("history", rows, fmt, f"no audit entries by {name}")


@main.group()
def alerts() -> None:
    """Read recorded alerts back, and check a rule file."""


@alerts.command("list")
@_connection_options("warehouse_dsn")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    help="only changes committed at or after this time (UTC)",
)
@click.option("--booking", help="only this booking's alerts")
@click.option("--rule", help="only this rule's alerts")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
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
    from bookaudit.warehouse.alerts import list_alerts, render_alerts_json, render_alerts_table

    cfg = _config(ctx, **flags)
    cfg.require("warehouse_dsn")
    assert cfg.warehouse_dsn is not None
    start = None if since is None else since.replace(tzinfo=UTC)
    rows = list_alerts(cfg.warehouse_dsn, since=start, booking=booking, rule=rule)
    if not rows and fmt == "table":
        log("no alerts")
        return
    click.echo(render_alerts_json(rows) if fmt == "json" else render_alerts_table(rows))


@alerts.command("rules")
@click.option("--rules", "alerts_rules", help="TOML rule file (BOOKAUDIT_ALERTS_RULES)")
@click.pass_context
def alerts_rules(ctx: click.Context, /, **flags: Any) -> None:
    """Check a rule file and show the rules the alerts consumer would apply."""
    from bookaudit.consumers.alerts.config import describe, load_rules

    cfg = _config(ctx, **flags)
    click.echo("\n".join(describe(load_rules(cfg.alerts_rules))))


def _register_optional() -> None:
    from bookaudit.demo.cli import demo

    main.add_command(demo)


_register_optional()
