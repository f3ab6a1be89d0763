"""`bookaudit demo`: the sample database, the day, the pipeline, and the booking's history."""

from __future__ import annotations

import time
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
        DEMO_APP_ROLE,
        create_app_role,
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
    # The application writes as its own non-owner login, as in production.
    app_dsn = create_app_role(source_dsn, DEMO_APP_ROLE, password=DEMO_APP_ROLE)
    existing = seed_existing(app_dsn, lambda m: log(f"  {m}"))
    log("demo: bookaudit source install (the audit is complete from here on)")
    started = install(
        source_dsn,
        [TableName.parse(t) for t in AUDITED_TABLES],
        publication=cfg.publication,
        slot=cfg.slot,
        mode=cfg.mode,
        snapshot=cfg.snapshot,
        grant_to=[DEMO_APP_ROLE],
    )
    log(f"  {started.describe()}")
    init_warehouse(warehouse_dsn)

    log("demo: playing the day (no capture is running yet)")
    booking_id = play_day(app_dsn, lambda m: log(f"  {m}"), psql_dsn=source_dsn)
    reschedule_existing(app_dsn, existing, lambda m: log(f"  {m}"))

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


@demo.command("schema")
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Create the sample bookings tables (idempotent): the application database to audit."""
    from bookaudit._commands import config_from, log
    from bookaudit.demo.day import AUDITED_TABLES, create_sample_schema

    cfg = config_from(ctx)
    create_sample_schema(cfg.need("source_dsn"))
    log(f"demo: sample tables ready: {', '.join(AUDITED_TABLES)}")


@demo.command("day")
@click.option(
    "--show-history",
    "wait_s",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="then wait up to SECONDS for the running capture and audit writer to catch up with "
    "the day, and print the booking's history",
)
@click.pass_context
def day(ctx: click.Context, /, wait_s: float | None) -> None:
    """Play the sample day as the application would, against a source already installed."""
    from bookaudit._commands import config_from, log
    from bookaudit.demo.day import play_day

    cfg = config_from(ctx)
    source_dsn = cfg.need("source_dsn")
    warehouse_dsn = cfg.need("warehouse_dsn") if wait_s else None
    log("demo: playing the day")
    booking_id = play_day(source_dsn, lambda m: log(f"  {m}"))
    if warehouse_dsn is None or wait_s is None:
        return
    _await_pipeline(cfg, _position_after_the_day(source_dsn, cfg.mode), wait_s)
    _print_timeline(warehouse_dsn, booking_id, cfg.source_name)


def _position_after_the_day(source_dsn: str, mode: str) -> str | None:
    """The WAL position every change of the day lies before; trigger mode has no slot to ask."""
    import psycopg

    if mode == "trigger":
        return None
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def _await_pipeline(cfg: Config, since: str | None, wait_s: float) -> None:
    """Wait until the running capture has published everything up to `since` (the source's WAL
    position after the day; in trigger mode, an empty outbox) and the audit writer's group has
    read every change topic to its end."""
    from bookaudit._commands import log
    from bookaudit.errors import TransientError

    deadline = time.monotonic() + wait_s
    last_note = 0.0
    while True:
        captured = _capture_caught_up(cfg, since)
        if captured and _writer_caught_up(cfg):
            return
        now = time.monotonic()
        if now > deadline:
            raise TransientError(
                f"the pipeline did not catch up with the day within {wait_s:.0f}s: are "
                "`bookaudit capture` and `bookaudit consume audit` running?"
            )
        if now - last_note >= 5:
            waiting = "the audit writer" if captured else "the capture"
            log(f"demo: waiting for {waiting} to catch up with the day")
            last_note = now
        time.sleep(1.0)


def _capture_caught_up(cfg: Config, since: str | None) -> bool:
    import psycopg

    with psycopg.connect(cfg.need("source_dsn"), autocommit=True) as conn:
        if since is None:  # trigger mode: the relay deletes only what Kafka acknowledged
            row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM bookaudit.outbox_commits)")
        else:
            row = conn.execute(
                "SELECT coalesce(confirmed_flush_lsn >= %s::pg_lsn, false) "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (since, cfg.slot),
            )
        found = row.fetchone()
    return bool(found and found[0])


def _writer_caught_up(cfg: Config) -> bool:
    """Every partition of every change topic committed to its end by the writer's group."""
    import re

    from confluent_kafka import Consumer, TopicPartition

    from bookaudit.consumers._kafka import change_topics_pattern

    pattern = re.compile(change_topics_pattern(cfg.topic_prefix))
    consumer = Consumer(
        {"bootstrap.servers": cfg.need("kafka_bootstrap"), "group.id": cfg.group_id,
         "enable.auto.commit": False}
    )  # fmt: skip
    try:
        topics = consumer.list_topics(timeout=10).topics
        partitions = [
            TopicPartition(name, p)
            for name, meta in topics.items()
            if pattern.match(name)
            for p in meta.partitions
        ]
        if not partitions:
            return False
        for tp in consumer.committed(partitions, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


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
    from bookaudit.consumers.alerts.job import AlertsJob, settings_from
    from bookaudit.consumers.alerts.rulefile import load_rules
    from bookaudit.warehouse.alerts import list_alerts, render_alerts_table

    assert cfg.warehouse_dsn
    rules = load_rules(cfg.alerts_rules, cfg.entity_map)
    settings = replace(settings_from(cfg, rules), webhook_url=None)  # the demo stays local
    AlertsJob(settings, rules, log).run(exit_when_idle=True)
    alerts = list_alerts(cfg.warehouse_dsn, booking=str(booking_id), source=cfg.source_name)
    click.echo(f"\nAlerts for booking {booking_id}:\n")
    click.echo(render_alerts_table(alerts) if alerts else "(none)")
