"""The audit writer: poll → decode → map → write → commit, each a named step, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bookaudit.config import Config
from bookaudit.consumers._kafka import ConsumerSettings, KafkaSource
from bookaudit.consumers.audit.writer import EntryRejected, WarehouseWriter
from bookaudit.consumers.records import AuditEntry, DeadLetter, Record, decode_and_map

PROGRESS_INTERVAL_S = 5.0


def settings_from(cfg: Config) -> tuple[ConsumerSettings, str]:
    """The writer's consumer settings and warehouse DSN from the one Config."""
    warehouse_dsn = cfg.need("warehouse_dsn")
    consumer = ConsumerSettings(
        bootstrap=cfg.need("kafka_bootstrap"),
        group_id=cfg.group_id,
        topic_prefix=cfg.topic_prefix,
        batch_size=cfg.batch_size,
    )
    return consumer, warehouse_dsn


@dataclass
class WriterStats:
    records: int = 0
    written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    # Commit → warehouse lag: source commit time to this writer's warehouse commit, in ms, of
    # the last batch and the largest seen (clocks of source and writer hosts must agree).
    lag_ms_last: int = 0
    lag_ms_max: int = 0


@dataclass
class LagWindow:
    """The commit → warehouse lags of the entries written since the last progress line."""

    lags_ms: list[int] = field(default_factory=list)

    def add(self, committed_at_ms: Sequence[int], now_ms: int) -> None:
        self.lags_ms.extend(now_ms - c for c in committed_at_ms)

    def summary(self) -> str:
        """`lag p50 12 ms, p99 40 ms, max 51 ms`, or `lag -` when nothing was written; resets."""
        if not self.lags_ms:
            return "lag -"
        ordered = sorted(self.lags_ms)
        self.lags_ms = []

        def pct(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return f"lag p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, max {ordered[-1]} ms"


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
        self._lags = LagWindow()

    def step(self) -> int:
        records = self.source.poll()
        if not records:
            return 0
        entries, dead = decode_and_map(records)
        for letter in dead:
            self.log(f"audit writer: dead-lettered {letter.error}")
        try:
            inserted = self.writer.write(entries, dead)
        except EntryRejected:
            inserted = self.write_one_by_one(records, entries, dead)
        now_ms = time.time_ns() // 1_000_000
        committed = [e.committed_at_ms for e in entries]
        self._lags.add(committed, now_ms)
        if committed:
            self.stats.lag_ms_last = now_ms - min(committed)
            self.stats.lag_ms_max = max(self.stats.lag_ms_max, self.stats.lag_ms_last)
        # Asynchronous: a lost offset commit only means re-reading events the warehouse drops.
        self.source.commit(records, asynchronous=True)
        self.stats.records += len(records)
        self.stats.written += inserted
        self.stats.duplicates += len(entries) - inserted
        self.stats.dead_letters += len(dead)
        return len(records)

    def write_one_by_one(
        self, records: Sequence[Record], entries: list[AuditEntry], dead: list[DeadLetter]
    ) -> int:
        """The warehouse refused a value somewhere in the batch: write each entry alone, so
        only the refused ones become dead letters (with their raw record) and the rest go on."""
        by_offset = {(r.topic, r.partition, r.offset): r for r in records}
        inserted = 0
        for entry in entries:
            try:
                inserted += self.writer.write([entry], [])
            except EntryRejected as exc:
                record = by_offset[(entry.kafka_topic, entry.kafka_partition, entry.kafka_offset)]
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                letter = DeadLetter(record, f"{where}: the warehouse refused a value: {exc}")
                self.log(f"audit writer: dead-lettered {letter.error}")
                dead.append(letter)
        self.writer.write([], dead)
        refused = {(d.record.topic, d.record.partition, d.record.offset) for d in dead}
        entries[:] = [
            e for e in entries if (e.kafka_topic, e.kafka_partition, e.kafka_offset) not in refused
        ]
        return inserted

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.log(
                f"audit writer: {self.stats.records} records, {self.stats.written} entries, "
                f"{self.stats.duplicates} duplicates dropped, {self.stats.dead_letters} dead letters, "
                f"commit → warehouse {self._lags.summary()}"
            )

    def run(self, exit_when_idle: bool = False) -> WriterStats:
        try:
            while True:
                got = self.step()
                self.report_progress()
                if exit_when_idle and got == 0 and self.source.at_end():
                    self.source.commit_all()
                    break
        finally:
            self.source.close()
            self.writer.close()
        self.log(
            f"audit writer: done, {self.stats.written} entries, "
            f"{self.stats.duplicates} duplicates dropped, {self.stats.dead_letters} dead letters"
        )
        return self.stats
