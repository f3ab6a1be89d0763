"""The audit writer: poll → decode → map → write → commit, each a named step, batch by batch."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bookaudit.config import Config
from bookaudit.consumers._kafka import ConsumerSettings, KafkaSource
from bookaudit.consumers.audit.lane import Pending, WarehouseLane
from bookaudit.consumers.audit.rows import prepare_rows
from bookaudit.consumers.audit.writer import IdPool, Phases, WarehouseWriter
from bookaudit.consumers.records import Record, distinct_entries, read_changes
from bookaudit.consumers.sources import SourceGuard

PROGRESS_INTERVAL_S = 5.0
# While the lane writes, how long one poll waits for more records to join the pending batch: the
# most a pending batch waits after the lane is free.
COALESCE_POLL_S = 0.002
# A pending batch goes to the lane, waiting for it if need be, once it holds this many polls'
# worth of records: it bounds what a crash makes the group re-read.
PENDING_BATCHES = 4
# Offsets of written batches are committed at most this often (and when idle, and at exit).
OFFSET_COMMIT_INTERVAL_S = 0.5
SWITCH_INTERVAL_S = 0.0005
# A free lane still waits this long after the last write began before it takes the next batch
# (unless a full one is pending), as a producer lingers: each warehouse transaction has a fixed
# cost (a chain link, two COPYs, a commit), which at 1,000 one-row transactions/s, written as
# they came, cost more CPU than the rows themselves (writer and warehouse together 560 µs per
# change against 210 µs lingering 25 ms, bench.writer). It adds at most this much latency.
WRITE_LINGER_S = 0.02


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
        self.phases = Phases()
        self.writer = WarehouseWriter(warehouse_dsn, self.phases)
        self.ids = IdPool(warehouse_dsn)
        self.guard = SourceGuard(warehouse_dsn)
        try:
            self.source = KafkaSource(settings)
        except BaseException:
            self.writer.close()
            self.ids.close()
            raise
        self.lane = WarehouseLane(self.writer)
        self._max_pending = settings.batch_size * PENDING_BATCHES
        self._pending = Pending(self._max_pending)
        self.idle = False
        self._last_offsets = time.monotonic()
        self._last_submit = 0.0
        # The lane thread waits on the warehouse several times per batch, and each time it has
        # the answer it needs the GIL back from the main thread, which is busy decoding: with
        # Python's default 5 ms switch interval the lane idled up to 5 ms per round trip.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._last_progress = time.monotonic()
        self._lags = LagWindow()

    def step(self) -> int:
        """Take what Kafka has, prepare it, and hand it to the warehouse lane once the lane is
        free and WRITE_LINGER_S has passed since the last write began. What arrives meanwhile
        joins one pending batch: a steady trickle then goes in one transaction (one chain link,
        one offset commit) per write instead of one per record, which keeps the writer ahead of
        the stream."""
        self.collect()
        lap = self.phases.lap
        started = time.perf_counter()
        early = WRITE_LINGER_S - (time.monotonic() - self._last_submit)
        waiting = bool(self._pending.records) and (self.lane.busy or early > 0)
        records = self.source.poll(max(COALESCE_POLL_S, early) if waiting else None)
        # Idle only after a full-length poll found nothing, not a short one beside a busy lane.
        self.idle = not records and not waiting
        if records:
            started = lap("poll Kafka", started)
            self._prepare(records)
            started = time.perf_counter()
        ready = not self.lane.busy and time.monotonic() - self._last_submit >= WRITE_LINGER_S
        if self._pending.records and (ready or self._pending.full()):
            self._last_submit = time.monotonic()
            self.lane.submit(self._pending.batch())
            self._pending = Pending(self._max_pending)
            lap("wait for the warehouse lane", started)
        return len(records)

    def _prepare(self, records: list[Record]) -> None:
        lap = self.phases.lap
        started = time.perf_counter()
        admitted, foreign = self.guard.admit(records)
        entries, dead = read_changes(admitted)
        dead += foreign
        started = lap("decode and map (Python)", started)
        for letter in dead:
            self.log(f"audit writer: dead-lettered {letter.error}")
        unique = distinct_entries(entries)
        ids = self.ids.take(len(unique))
        rows = prepare_rows(unique, ids, time.time_ns() // 1000)
        self._pending.add(records, [e.committed_at_ms for e in entries], rows, dead)
        lap("rows, canonical form and leaves (Python)", started)

    def flush(self) -> None:
        """Hand the pending batch to the lane now, busy or not."""
        if self._pending.records:
            self.lane.submit(self._pending.batch())
            self._pending = Pending(self._max_pending)

    def collect(self, wait: bool = False) -> None:
        """Account for the batches the lane committed, and only then commit their offsets."""
        for done in self.lane.finished(wait):
            batch = done.batch
            for letter in done.refused:
                self.log(f"audit writer: dead-lettered {letter.error}")
            self._lags.add(batch.committed_at_ms, done.committed_ms)
            if batch.committed_at_ms:
                self.stats.lag_ms_last = done.committed_ms - min(batch.committed_at_ms)
                self.stats.lag_ms_max = max(self.stats.lag_ms_max, self.stats.lag_ms_last)
            self.source.processed(batch.records)
            self.stats.records += len(batch.records)
            self.stats.written += done.inserted
            self.stats.duplicates += batch.entries - done.inserted - len(done.refused)
            self.stats.dead_letters += len(batch.dead) + len(done.refused)
        now = time.monotonic()
        if now - self._last_offsets >= OFFSET_COMMIT_INTERVAL_S:
            # Asynchronous, and at most this often: each commit is a write on the broker, and a
            # lost or late one only means re-reading events the warehouse drops.
            self._last_offsets = now
            started = time.perf_counter()
            self.source.commit_processed()
            self.phases.lap("commit offsets (Kafka)", started)

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
                self.step()
                self.report_progress()
                if exit_when_idle and self.idle:
                    # Idle: what is written is committed, then the group's offsets decide.
                    self.flush()
                    self.collect(wait=True)
                    self.source.commit_all()
                    if self.source.caught_up():
                        break
        finally:
            self.lane.close()
            self.source.close()
            self.writer.close()
            self.ids.close()
            self.guard.close()
        self.log(
            f"audit writer: done, {self.stats.written} entries, "
            f"{self.stats.duplicates} duplicates dropped, {self.stats.dead_letters} dead letters"
        )
        return self.stats
