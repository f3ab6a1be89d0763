"""`bookaudit demo`: the sample database, the day, the pipeline, and the booking's history."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from bookaudit.config import Config


@click.group()
def demo() -> None:
    """Play the sample day through the whole pipeline."""


@demo.command("run")
@click.pass_context
def run(ctx: click.Context) -> None:
    """Sample schema → install → the day → capture → audit writer → history."""
    from bookaudit.cdc.capture import Capture
    from bookaudit.cdc.capture import settings_from as capture_settings_from
    from bookaudit.cdc.relay import OutboxRelay
    from bookaudit.cli import _config, log
    from bookaudit.consumers.audit.job import AuditWriter
    from bookaudit.consumers.audit.job import settings_from as writer_settings_from
    from bookaudit.demo.day import (
        AUDITED_TABLES,
        DEMO_APP_ROLE,
        create_app_role,
        create_sample_schema,
        play_day,
    )
    from bookaudit.source.install import TableName, apply, plan_install
    from bookaudit.warehouse.history import booking_history, render_table
    from bookaudit.warehouse.schema import init_warehouse

    cfg = _config(ctx)
    cfg.require("source_dsn", "warehouse_dsn", "kafka_bootstrap")
    assert cfg.source_dsn and cfg.warehouse_dsn and cfg.kafka_bootstrap
    import psycopg

    log("demo: creating the sample bookings database")
    create_sample_schema(cfg.source_dsn)
    # The day is played by the application's own non-owner login, as in production.
    app_dsn = create_app_role(cfg.source_dsn, DEMO_APP_ROLE, password=DEMO_APP_ROLE)
    tables = [TableName.parse(t) for t in AUDITED_TABLES]
    with psycopg.connect(cfg.source_dsn, autocommit=True) as conn:
        apply(conn, plan_install(conn, tables, cfg.publication, cfg.mode, [DEMO_APP_ROLE]))
    init_warehouse(cfg.warehouse_dsn)
    capture_settings = capture_settings_from(cfg, exit_when_idle=True)
    # BOOKAUDIT_MODE=trigger plays the same day through the outbox relay instead.
    runner = OutboxRelay if cfg.mode == "trigger" else Capture
    # The slot must exist before the day, or its changes would precede the slot and be lost.
    runner(capture_settings, log).run()

    log("demo: playing the day")
    booking_id = play_day(app_dsn, lambda m: log(f"  {m}"), psql_dsn=cfg.source_dsn)

    log("demo: capture → Kafka")
    runner(capture_settings, log).run()
    log("demo: Kafka → audit warehouse")
    AuditWriter(*writer_settings_from(cfg), log).run(exit_when_idle=True)

    click.echo(f"\nHistory of booking {booking_id}:\n")
    click.echo(render_table(booking_history(cfg.warehouse_dsn, str(booking_id))))

    log("\ndemo: Kafka → alerts")
    _raise_alerts(cfg, booking_id)


def _raise_alerts(cfg: Config, booking_id: int) -> None:
    """The alerts consumer over the same topics, then what it raised for the day's booking."""
    from bookaudit.cli import log
    from bookaudit.consumers.alerts.config import load_rules
    from bookaudit.consumers.alerts.job import AlertsJob, settings_from
    from bookaudit.warehouse.alerts import list_alerts, render_alerts_table

    assert cfg.warehouse_dsn
    rules = load_rules(cfg.alerts_rules)
    settings = replace(settings_from(cfg, rules), webhook_url=None)  # the demo stays local
    AlertsJob(settings, rules, log).run(exit_when_idle=True)
    alerts = list_alerts(cfg.warehouse_dsn, booking=str(booking_id))
    click.echo(f"\nAlerts for booking {booking_id}:\n")
    click.echo(render_alerts_table(alerts) if alerts else "(none)")
