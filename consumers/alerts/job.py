"""The alerting job: poll → decode → remember → evaluate → record → emit → commit, batch by batch."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bookaudit.config import Config
from bookaudit.consumers._kafka import ConsumerSettings, KafkaSource
from bookaudit.consumers.alerts.model import ChangeEvent, InvoiceSent, watch_events
from bookaudit.consumers.alerts.recovery import recover_kafka
from bookaudit.consumers.alerts.rules import evaluate_batch
from bookaudit.consumers.alerts.ruleset import AfterInvoiceSent, RuleSet
from bookaudit.consumers.alerts.sink import KafkaOutput, StdoutOutput, WebhookOutput
from bookaudit.consumers.alerts.state import AlertStore, Pending, RecordedAlert
from bookaudit.consumers.records import DeadLetter, Record, decode_and_map
from bookaudit.consumers.sources import SourceGuard
from bookaudit.errors import TerminalError
from bookaudit.kafka.alert import alerts_topic

PROGRESS_INTERVAL_S = 5.0


@dataclass(frozen=True)
class AlertsSettings:
    consumer: ConsumerSettings
    warehouse_dsn: str
    topic: str
    webhook_url: str | None = None
    # With --exit-when-idle, how long to wait for a slow webhook before leaving the rest in the
    # outbox for the next run.
    webhook_drain_s: float = 30.0
    # How often to look for alerts a dead instance recorded but did not deliver.
    recovery_interval_s: float = 30.0


def settings_from(cfg: Config, rules: RuleSet) -> AlertsSettings:
    """The job's settings from the one Config; the rules decide which topics it reads."""
    warehouse_dsn = cfg.need("warehouse_dsn")
    consumer = ConsumerSettings(
        bootstrap=cfg.need("kafka_bootstrap"),
        group_id=cfg.alerts_group_id,
        topic_prefix=cfg.topic_prefix,
        batch_size=cfg.batch_size,
        # Eager polls hand over a batch as soon as one record is there; the timeout only paces
        # the idle loop.
        poll_timeout_s=0.5,
        tables=rules.topics_tables,
        eager=True,
    )
    return AlertsSettings(
        consumer=consumer,
        warehouse_dsn=warehouse_dsn,
        topic=alerts_topic(cfg.topic_prefix),
        webhook_url=cfg.alerts_webhook,
    )


@dataclass
class AlertsStats:
    records: int = 0
    changes: int = 0
    invoices: int = 0
    alerts: int = 0
    dead_letters: int = 0
    recovered: int = 0


@dataclass(frozen=True)
class Batch:
    """One poll's records, sorted into what the rules judge and what cannot be read."""

    records: tuple[Record, ...]
    changes: tuple[ChangeEvent, ...]
    invoices: tuple[InvoiceSent, ...]
    dead: tuple[DeadLetter, ...]

    def booking_keys(self) -> list[str]:
        named: list[ChangeEvent | InvoiceSent] = [*self.changes, *self.invoices]
        return sorted({f"{w.source}/{w.booking_id}" for w in named if w.booking_id is not None})


def decode_batch(records: Sequence[Record], rules: RuleSet) -> Batch:
    """Pure: the same decoding and mapping as the audit writer, then the rules' view of it."""
    entries, dead = decode_and_map(list(records))
    changes: list[ChangeEvent] = []
    invoices: list[InvoiceSent] = []
    for entry in entries:
        for watched in watch_events(entry, rules):
            if isinstance(watched, ChangeEvent):
                changes.append(watched)
            else:
                invoices.append(watched)
    return Batch(tuple(records), tuple(changes), tuple(invoices), tuple(dead))


def instance_lock(owner: str) -> str:
    """The advisory lock an instance holds while it lives; free means its deliveries are orphans."""
    return f"bookaudit.alerts.instance:{owner}"


class AlertsJob:
    """One instance of the alerts consumer group. Each step is a method; `run` sequences them."""

    def __init__(
        self,
        settings: AlertsSettings,
        rules: RuleSet,
        log: Callable[[str], None],
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.log = log
        self.stats = AlertsStats()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.channels = ("kafka", "webhook") if settings.webhook_url else ("kafka",)
        self.store = AlertStore(settings.warehouse_dsn, "bookaudit-alerts")
        self.guard = SourceGuard(settings.warehouse_dsn)
        self.stdout = None if out is None else StdoutOutput(out)
        self.kafka = KafkaOutput(settings.consumer.bootstrap, settings.topic, self.store)
        self.webhook: WebhookOutput | None = None
        self.source: KafkaSource | None = None
        self._adopted: set[str] = set()
        self._submitted: set[int] = set()
        self._told_no_webhook = False
        self._last_recovery = 0.0
        self._last_progress = time.monotonic()

    # --- steps ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.store.hold_lock(instance_lock(self.instance)):
            raise TerminalError(f"alerts instance id {self.instance} is already in use")
        if self.settings.webhook_url:
            worker_store = AlertStore(self.settings.warehouse_dsn, "bookaudit-alerts-webhook")
            self.webhook = WebhookOutput(self.settings.webhook_url, worker_store, self.log)
        self.recover()
        self.source = KafkaSource(self.settings.consumer)
        self.log(
            f"alerts: {len(self.rules.rules)} rules from {self.rules.origin}, reading "
            f"{', '.join(self.rules.topics_tables)} as group {self.settings.consumer.group_id!r}, "
            f"alerts to {self.settings.topic}"
            + (f" and {self.webhook.target}" if self.webhook else "")
        )

    def poll(self) -> list[Record]:
        assert self.source is not None
        return self.source.poll()

    def record(self, batch: Batch) -> list[RecordedAlert]:
        """Remember → evaluate → record in one warehouse transaction; returns the new alerts."""
        wants_invoices = any(isinstance(r, AfterInvoiceSent) for r in self.rules.rules)
        with self.store.batch() as tx:
            tx.lock_bookings(batch.booking_keys())
            tx.remember([*batch.changes, *batch.invoices])
            contexts = tx.contexts(
                batch.changes,
                invoices=wants_invoices,
                window_minutes=self.rules.max_window_minutes,
            )
            later = tx.later_changes(batch.invoices) if wants_invoices else []
            alerts = evaluate_batch(batch.changes, contexts, batch.invoices, later, self.rules)
            recorded = tx.record(alerts, owner=self.instance, channels=self.channels)
            for letter in batch.dead:
                tx.dead_letter(letter.record, letter.error)
        for letter in batch.dead:
            self.log(f"alerts: dead-lettered {letter.error}")
        return recorded

    def emit(self, alerts: Sequence[RecordedAlert]) -> None:
        if self.stdout is not None:
            self.stdout.emit(alerts)
        self.kafka.send(alerts)
        if self.webhook is not None:
            self.webhook.submit(alerts)
            self._submitted.update(a.id for a in alerts)

    def commit(self, records: Sequence[Record]) -> None:
        assert self.source is not None
        self.source.commit(records)

    def _orphans(self, channel: str) -> list[Pending]:
        pending = self.store.pending(channel, self.instance)
        for owner in sorted({p.owner for p in pending} - self._adopted):
            if self.store.hold_lock(instance_lock(owner)):
                self._adopted.add(owner)
                self.log(f"alerts: taking over the undelivered alerts of instance {owner}")
        return [p for p in pending if p.owner in self._adopted]

    def recover(self) -> None:
        """Deliver what dead instances (this process's earlier runs included) left undelivered."""
        self._last_recovery = time.monotonic()
        produced = recover_kafka(self.kafka, self.store, self._orphans("kafka"))
        if produced:
            self.log(f"alerts: produced {produced} alert(s) a stopped instance had not")
        self.stats.recovered += produced
        waiting = [p.alert for p in self._orphans("webhook") if p.alert.id not in self._submitted]
        if not waiting:
            return
        if self.webhook is None:
            if not self._told_no_webhook:
                self.log(
                    f"alerts: {len(waiting)} alert(s) wait for webhook delivery; "
                    "run with --webhook to deliver them"
                )
                self._told_no_webhook = True
            return
        self.webhook.submit(waiting)
        self._submitted.update(a.id for a in waiting)

    def step(self) -> int:
        records = self.poll()
        if records:
            # Events of a second database under a bound source name are the audit writer's
            # dead letters too: alerts never judge one database's edits by another's.
            admitted, foreign = self.guard.admit(records)
            batch = decode_batch(admitted, self.rules)
            batch = replace(batch, records=tuple(records), dead=(*batch.dead, *foreign))
            recorded = self.record(batch)
            self.emit(recorded)
            self.commit(records)
            self.stats.records += len(records)
            self.stats.changes += len(batch.changes)
            self.stats.invoices += len(batch.invoices)
            self.stats.alerts += len(recorded)
            self.stats.dead_letters += len(batch.dead)
        if self.webhook is not None and self.webhook.error is not None:
            raise TerminalError(f"webhook delivery stopped: {self.webhook.error!r}")
        if time.monotonic() - self._last_recovery >= self.settings.recovery_interval_s:
            self.recover()
        return len(records)

    def report_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            waiting = f", {self.webhook.pending} wait for the webhook" if self.webhook else ""
            self.log(
                f"alerts: {self.stats.records} records, {self.stats.changes} changes judged, "
                f"{self.stats.alerts} alerts raised{waiting}"
            )

    def run(self, exit_when_idle: bool = False) -> AlertsStats:
        try:
            self.start()
            assert self.source is not None
            while True:
                got = self.step()
                self.report_progress()
                if exit_when_idle and got == 0 and self.source.caught_up():
                    break
            self.drain_webhook()
        finally:
            self.close()
        self.log(
            f"alerts: done, {self.stats.alerts} alerts raised from {self.stats.changes} changes, "
            f"{self.stats.dead_letters} dead letters"
        )
        return self.stats

    def drain_webhook(self) -> None:
        if self.webhook is None or self.webhook.drain(self.settings.webhook_drain_s):
            return
        self.log(
            f"alerts: {self.webhook.pending} alert(s) not yet taken by {self.webhook.target}; "
            "they stay in the outbox and the next run delivers them"
        )

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        if self.webhook is not None:
            self.webhook.close()
        self.store.close()
        self.guard.close()
