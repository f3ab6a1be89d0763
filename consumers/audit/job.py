"""The audit writer: poll → decode → map → write → commit, each a named step, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bookaudit.config import Config
from bookaudit.consumers._kafka import ConsumerSettings, KafkaSource
from bookaudit.consumers.audit.writer import WarehouseWriter
from bookaudit.consumers.records import decode_and_map

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
    duplicates: int = 0
    dead_letters: int = 0


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
        inserted = self.writer.write(entries, dead)
        self.source.commit(records)
        self.stats.records += len(records)
        self.stats.written += inserted
        self.stats.duplicates += len(entries) - inserted
        self.stats.dead_letters += len(dead)
        return len(records)

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.log(
                f"audit writer: {self.stats.records} records, {self.stats.written} entries, "
                f"{self.stats.duplicates} duplicates dropped, {self.stats.dead_letters} dead letters"
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
            f"{self.stats.duplicates} duplicates dropped, {self.stats.dead_letters} dead letters"
        )
        return self.stats
