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
    """Sample schema with existing bookings → install → the day → capture → audit writer →
    the histories (one booking from the day, one from before the install)."""
    from bookaudit._commands import config_from, log
    from bookaudit.cdc.capture import Capture
    from bookaudit.cdc.relay import OutboxRelay
    from bookaudit.cdc.settings import settings_from as capture_settings_from
    from bookaudit.consumers.audit.job import AuditWriter
    from bookaudit.consumers.audit.job import settings_from as writer_settings_from
    from bookaudit.demo.day import (
        AUDITED_TABLES,
        create_sample_schema,
        play_day,
        reschedule_existing,
        seed_existing,
    )
    from bookaudit.source.audit_start import install
    from bookaudit.source.install import TableName
    from bookaudit.warehouse.schema import init_warehouse

    cfg = config_from(ctx)
    source_dsn, warehouse_dsn = cfg.need("source_dsn"), cfg.need("warehouse_dsn")
    cfg.need("kafka_bootstrap")

    log("demo: creating the sample bookings database, with bookings from before the audit")
    create_sample_schema(source_dsn)
    existing = seed_existing(source_dsn, lambda m: log(f"  {m}"))
    log("demo: bookaudit source install (the audit is complete from here on)")
    started = install(
        source_dsn,
        [TableName.parse(t) for t in AUDITED_TABLES],
        publication=cfg.publication,
        slot=cfg.slot,
        mode=cfg.mode,
        snapshot=cfg.snapshot,
    )
    log(f"  {started.describe()}")
    init_warehouse(warehouse_dsn)

    log("demo: playing the day (no capture is running yet)")
    booking_id = play_day(source_dsn, lambda m: log(f"  {m}"))
    reschedule_existing(source_dsn, existing, lambda m: log(f"  {m}"))

    # Started only now, as a deploy would: the install's slot (or outbox) kept the whole day.
    # BOOKAUDIT_MODE=trigger plays the same day through the outbox relay instead.
    log("demo: capture → Kafka (first start)")
    runner = OutboxRelay if cfg.mode == "trigger" else Capture
    runner(capture_settings_from(cfg, exit_when_idle=True), log).run()
    log("demo: Kafka → audit warehouse")
    AuditWriter(*writer_settings_from(cfg), log).run(exit_when_idle=True)

    # A booking from before the install: its timeline starts with the row as it stood then.
    _print_timeline(warehouse_dsn, existing, cfg.source_name, "which existed before the install")
    _print_timeline(warehouse_dsn, booking_id, cfg.source_name)
    _print_log(warehouse_dsn, cfg.source_name)

    log("\ndemo: Kafka → alerts")
    _raise_alerts(cfg, booking_id)
    click.echo(
        f"\nBrowse it: `bookaudit serve`, then http://127.0.0.1:8765/bookings/{booking_id} "
        "(timeline, as-of, diff, evidence), /log (the day), /alerts"
    )


def _print_timeline(dsn: str, booking_id: int, source: str, note: str = "") -> None:
    """The booking's labelled timeline."""
    from bookaudit.warehouse import history as h

    zone = h.local_zone()
    rows = h.booking_rows(dsn, str(booking_id), h.Filters(source=source, zone=zone))
    click.echo(f"\nTimeline of booking {booking_id}{', ' + note if note else ''}:\n")
    shown = h.timeline_table_rows(h.entries(rows), zone)
    click.echo(h.render_table(shown, wide=("changes", "approval / reason")))


def _print_log(dsn: str, source: str) -> None:
    """The day's Booking History Log with its counts."""
    from bookaudit.warehouse import history as h

    zone = h.local_zone()
    day = h.day_filters(zone, source)
    log_rows = h.log_rows(dsn, day)
    click.echo("\n" + h.render_log(
        log_rows, h.booking_counts(log_rows), h.actor_totals(log_rows), zone,
        h.describe_period(day),
    ))  # fmt: skip


def _raise_alerts(cfg: Config, booking_id: int) -> None:
    """The alerts consumer over the same topics, then what it raised for the day's booking."""
    from bookaudit._commands import log
    from bookaudit.consumers.alerts.config import load_rules
    from bookaudit.consumers.alerts.job import AlertsJob, settings_from
    from bookaudit.warehouse.alerts import list_alerts, render_alerts_table

    assert cfg.warehouse_dsn
    rules = load_rules(cfg.alerts_rules, cfg.entity_map)
    settings = replace(settings_from(cfg, rules), webhook_url=None)  # the demo stays local
    AlertsJob(settings, rules, log).run(exit_when_idle=True)
    alerts = list_alerts(cfg.warehouse_dsn, booking=str(booking_id), source=cfg.source_name)
    click.echo(f"\nAlerts for booking {booking_id}:\n")
    click.echo(render_alerts_table(alerts) if alerts else "(none)")
