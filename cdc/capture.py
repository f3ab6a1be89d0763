"""Runs one capture: read frame → decode → assemble → publish → confirm, until stopped or idle."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from bookaudit.cdc.baseline import BaselineSource, relay_baseline
from bookaudit.cdc.decode import Keepalive, Relation, decode_copy_data, decode_message
from bookaudit.cdc.gaps import (
    SlotLostError,
    accept_gap,
    lost_slot_message,
    read_confirmed,
    record_confirmed,
    slot_condition,
)
from bookaudit.cdc.produce import AckLedger
from bookaudit.cdc.settings import PROGRESS_INTERVAL_S, CaptureSettings, CaptureStats
from bookaudit.cdc.stream import Catalog, ReplicationStream
from bookaudit.cdc.transactions import TransactionAssembler
from bookaudit.classify import kafka_error, pg_error
from bookaudit.errors import SourceCheckError
from bookaudit.kafka.producer import KafkaSink, ProducerSettings
from bookaudit.kafka.serde import to_kafka
from bookaudit.model import RowChange, SourceInfo, format_lsn, parse_lsn

STATUS_INTERVAL_S = 1.0
# How often the confirmed position is also written to bookaudit.capture_state (outside the slot).
STATE_INTERVAL_S = 5.0
READ_BATCH = 2000
# After a read that found only a few messages, the capture waits this long before reading again,
# as the producer lingers: the walsender sends every message as it decodes it, and waking for
# each transaction's few cost about a fifth of the capture's CPU at 2,500 one-row transactions/s
# (132 and 127 against 99 and 113 µs per transaction, two pairs of runs). It adds at most this
# much latency.
READ_LINGER_S = 0.002
READ_LINGER_BELOW = 64


class Capture:
    """One session of the slot. Each step is a method; `run` only sequences them."""

    def __init__(self, settings: CaptureSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.log = log
        self.stats = CaptureStats()
        self.catalog = Catalog(settings.source_dsn)
        self.source = SourceInfo(
            name=settings.source_name, db=self.catalog.dbname, identity=self.catalog.identity()
        )
        self.assembler = TransactionAssembler(
            self.catalog.resolve, self.catalog.context_key(), self.catalog.render
        )
        self.ledger = AckLedger()
        self.sink = KafkaSink(ProducerSettings(settings.kafka_bootstrap, settings.partitions))
        self.stream: ReplicationStream | None = None
        self.server_wal_end = 0
        self._last_status = 0.0
        self._last_progress = time.monotonic()
        self._sent_lsn = -1
        self._recorded = 0  # the ledger position last written to capture_state
        self._last_record = 0.0

    def open(self) -> int | None:
        """Check the slot, send what is left of the baseline, then start streaming; returns the
        idle target, if any."""
        self.sink.check()
        self.check_slot()
        self.catalog.check_slot(self.settings.slot, self.settings.publication)
        self.adopt_partitions()
        self.stats.baseline = relay_baseline(
            BaselineSource(self.catalog.conn),
            self.sink,
            self.source,
            self.settings.topic_prefix,
            self.log,
        )
        target = parse_lsn(self.catalog.current_lsn()) if self.settings.exit_when_idle else None
        self.stream = ReplicationStream(self.settings.source_dsn)
        self.stream.start(self.settings.slot, self.settings.publication)
        self.log(
            f"capture: streaming slot {self.settings.slot!r} to {self.settings.kafka_bootstrap}"
        )
        return target

    def check_slot(self) -> None:
        """A missing or invalidated slot stops the capture with what was lost, unless the user
        accepted the gap; then it is recorded and a new slot starts from now. The capture never
        creates a slot on its own: `source install` does, so a missing one was lost, even
        before the first capture."""
        conn, slot = self.catalog.conn, self.settings.slot
        condition = slot_condition(conn, slot)
        confirmed = read_confirmed(conn, slot)
        why = condition.lost
        if why is None:
            return
        if not self.settings.accept_gap:
            now = parse_lsn(self.catalog.current_lsn())
            raise SlotLostError(lost_slot_message(slot, why, confirmed, now))
        self.log(accept_gap(conn, slot, why, confirmed))

    def adopt_partitions(self) -> None:
        """Adopting is what keeps the row trigger idle; until it can, that trigger loses
        nothing, so a refusal is said and the capture goes on."""
        try:
            lines = self.catalog.adopt_partitions(self.settings.publication)
        except SourceCheckError as exc:
            lines = [str(exc)]
        for line in lines:
            self.log(f"capture: {line}")

    def partition_identity(self, relation: Relation) -> None:
        """pgoutput sends a partition's own relation, with the replica identity it had when its
        changes were written, before those changes. Not FULL (a partition created or attached
        after install, before any capture saw it): its updates and deletes until it is FULL carry
        only the key as old values. Say so, naming it, and make it FULL from now on."""
        root = self.catalog.partition_of(relation.oid)
        if root is None:
            return
        self.log(
            f"capture: partition {relation.namespace}.{relation.name} of {root} was written "
            f"without REPLICA IDENTITY FULL: its old rows come from bookaudit's row trigger "
            "until it is FULL, which it is made now"
        )
        self.adopt_partitions()

    def record_position(self, force: bool = False) -> None:
        """Keep the confirmed position outside the slot, so a lost slot can say what was lost.
        Written only when real transactions moved it, so an idle capture writes nothing."""
        lsn = self.ledger.confirmed_lsn
        now = time.monotonic()
        if lsn > self._recorded and (force or now - self._last_record >= STATE_INTERVAL_S):
            record_confirmed(self.catalog.conn, self.settings.slot, max(lsn, self._sent_lsn))
            self._recorded = lsn
            self._last_record = now

    def handle(self, data: bytes) -> None:
        frame = decode_copy_data(data)
        if isinstance(frame, Keepalive):
            self.server_wal_end = max(self.server_wal_end, frame.wal_end)
            if frame.reply_requested:
                self.confirm(force=True)
            return
        self.server_wal_end = max(self.server_wal_end, frame.wal_end)
        message = decode_message(frame.payload)
        if isinstance(message, Relation) and message.replica_identity != "f":
            self.partition_identity(message)
        for out in self.assembler.feed(frame.wal_start, message):
            if isinstance(out, RowChange):
                self.publish(out)
            else:
                self.ledger.close(out.end_lsn)
                self.stats.transactions += 1

    def publish(self, change: RowChange) -> None:
        record = to_kafka(
            change, self.source, self.settings.topic_prefix, time.time_ns() // 1_000_000
        )
        self.sink.send(record, self.ledger.track())
        self.stats.changes += 1

    def confirm(self, force: bool = False) -> None:
        """Tell the server how far Kafka has acknowledged, and never further."""
        self.sink.poll(0)
        if self.ledger.error:
            raise kafka_error("Kafka refused an event", self.ledger.failure)
        lsn = self.ledger.advance()
        if self.ledger.drained and not self.assembler.in_transaction:
            # Nothing is pending, so everything the server has sent so far is safe to release.
            lsn = max(lsn, self.server_wal_end)
        now = time.monotonic()
        if force or (lsn != self._sent_lsn and now - self._last_status >= STATUS_INTERVAL_S):
            assert self.stream is not None
            self.stream.send_status(lsn)
            self._sent_lsn = lsn
            self._last_status = now
            self.stats.confirmed_lsn = lsn
            self.record_position(force)

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.log(
                f"capture: {self.stats.changes} changes in {self.stats.transactions} transactions, "
                f"confirmed {format_lsn(self.stats.confirmed_lsn)}"
            )

    def caught_up(self, target: int) -> bool:
        """Idle: every transaction up to the WAL position seen at start is in Kafka and confirmed."""
        if self.assembler.in_transaction or self.server_wal_end < target:
            return False
        self.sink.flush()
        self.confirm()
        return self.ledger.drained

    def request_keepalive(self) -> None:
        assert self.stream is not None
        self.confirm()
        self.stream.send_status(self._sent_lsn if self._sent_lsn >= 0 else 0, reply_requested=True)

    def run(self) -> CaptureStats:
        try:
            self._run()
        except psycopg.Error as exc:
            # Catalog lookups mid-stream: a lost connection retries, anything else stops.
            raise pg_error("capture: source query failed", exc) from None
        self.log(
            f"capture: done, {self.stats.changes} changes, confirmed {format_lsn(self.stats.confirmed_lsn)}"
        )
        return self.stats

    def _run(self) -> None:
        try:
            target = self.open()
            assert self.stream is not None
            while True:
                data = self.stream.read(timeout=0.2)
                idle = data is None
                batch = 0
                # Read what is already buffered before paying for a status round trip.
                while data is not None and batch < READ_BATCH:
                    self.handle(data)
                    batch += 1
                    data = self.stream.read(timeout=0)
                if data is not None:
                    self.handle(data)
                self.confirm()
                self.report_progress()
                if 0 < batch < READ_LINGER_BELOW:
                    time.sleep(READ_LINGER_S)
                if target is not None and idle:
                    if self.caught_up(target):
                        self.confirm(force=True)
                        break
                    self.request_keepalive()
        finally:
            self.close()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.catalog.close()
