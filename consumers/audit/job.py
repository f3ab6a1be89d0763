"""The audit writer: poll → decode → map → write → commit, each a named step, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bookaudit.config import Config
from bookaudit.consumers._kafka import ConsumerSettings, KafkaSource
from bookaudit.consumers.audit.mapper import AuditEntry, to_audit_entry
from bookaudit.consumers.audit.writer import DeadLetter, WarehouseWriter
from bookaudit.consumers.decode import Record, decode_record
from bookaudit.errors import PoisonMessageError

PROGRESS_INTERVAL_S = 5.0


def settings_from(cfg: Config) -> tuple[ConsumerSettings, str]:
    """The writer's consumer settings and warehouse DSN from the one Config."""
    cfg.require("warehouse_dsn", "kafka_bootstrap")
    assert cfg.warehouse_dsn is not None and cfg.kafka_bootstrap is not None
    consumer = ConsumerSettings(
        bootstrap=cfg.kafka_bootstrap,
        group_id=cfg.group_id,
        topic_prefix=cfg.topic_prefix,
        batch_size=cfg.batch_size,
    )
    return consumer, cfg.warehouse_dsn


@dataclass
class WriterStats:
    records: int = 0
    written: int = 0
    dead_letters: int = 0


def decode_and_map(records: list[Record]) -> tuple[list[AuditEntry], list[DeadLetter]]:
    """Pure: a bad record becomes a dead letter value, never an exception out of the batch."""
    entries: list[AuditEntry] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            entries.append(to_audit_entry(decode_record(record)))
        except PoisonMessageError as exc:
            dead.append(DeadLetter(record, str(exc)))
        except (KeyError, TypeError, ValueError) as exc:
            dead.append(DeadLetter(record, f"cannot map envelope: {type(exc).__name__}: {exc}"))
    return entries, dead


class AuditWriter:
    def __init__(
        self, settings: ConsumerSettings, warehouse_dsn: str, log: Callable[[str], None]
    ) -> None:
        self.log = log
        self.stats = WriterStats()
        self.writer = WarehouseWriter(warehouse_dsn)
        try:
            self.source = KafkaSource(settings)
        except BaseException:
            self.writer.close()
            raise
        self._last_progress = time.monotonic()

    def step(self) -> int:
        records = self.source.poll()
        if not records:
            return 0
        entries, dead = decode_and_map(records)
        for letter in dead:
            self.log(f"audit writer: dead-lettered {letter.error}")
        self.writer.write(entries, dead)
        self.source.commit(records)
        self.stats.records += len(records)
        self.stats.written += len(entries)
        self.stats.dead_letters += len(dead)
        return len(records)

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.log(
                f"audit writer: {self.stats.records} records, {self.stats.written} entries, "
                f"{self.stats.dead_letters} dead letters"
            )

    def run(self, exit_when_idle: bool = False) -> WriterStats:
        try:
            while True:
                got = self.step()
                self.report_progress()
                if exit_when_idle and got == 0 and self.source.at_end():
                    break
        finally:
            self.source.close()
            self.writer.close()
        self.log(
            f"audit writer: done, {self.stats.written} entries, "
            f"{self.stats.dead_letters} dead letters"
        )
        return self.stats
