"""The warehouse lane: one thread writes prepared batches in order while the next is prepared.

Decoding, mapping and hashing a batch is Python work; storing it is mostly the warehouse's work
and waiting for it (psycopg releases the GIL while it waits). Overlapping the two keeps both
busy. Batches are written one at a time in the order given, each in its own transaction, and
the caller learns of each only after it committed, so offsets still move only after the
warehouse holds a batch. What arrives while the lane writes waits as one Pending batch, so the
number of transactions follows the warehouse's pace, not the stream's.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from bookaudit.consumers.audit.rows import PreparedRow
from bookaudit.consumers.audit.writer import EntryRejected, WarehouseWriter
from bookaudit.consumers.records import DeadLetter, Record
from bookaudit.model import Position

# Batches waiting for the lane: enough to keep it busy, few enough that little is re-read after
# a crash (nothing is lost either way: their offsets are not committed).
DEPTH = 2


@dataclass(frozen=True, slots=True)
class Batch:
    records: list[Record]
    entries: int
    committed_at_ms: list[int]
    rows: list[PreparedRow]
    dead: list[DeadLetter]


@dataclass
class Pending:
    """Prepared records waiting for the lane while it writes, handed to it as one batch."""

    limit: int
    records: list[Record] = field(default_factory=list)
    committed_at_ms: list[int] = field(default_factory=list)
    rows: list[PreparedRow] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    entries: int = 0
    # One row per event in a batch, as the lane's writer requires: a copy in a later poll (a
    # re-sent event) is dropped here, as distinct_entries drops one within a poll.
    keys: set[tuple[str, Position, int]] = field(default_factory=set)

    def add(
        self,
        records: list[Record],
        committed_at_ms: list[int],
        rows: list[PreparedRow],
        dead: list[DeadLetter],
    ) -> None:
        self.records += records
        self.committed_at_ms += committed_at_ms
        for row in rows:
            if row.key not in self.keys:
                self.keys.add(row.key)
                self.rows.append(row)
        self.dead += dead
        self.entries += len(committed_at_ms)

    def full(self) -> bool:
        return len(self.records) >= self.limit

    def batch(self) -> Batch:
        # Each poll's rows come sorted by identity, but polls joined here interleave: sorted
        # again, every writer inserts in one key order, so two writers given overlapping copies
        # wait on each other's unique-key entries instead of deadlocking.
        rows = sorted(self.rows, key=_identity)
        return Batch(self.records, self.entries, self.committed_at_ms, rows, self.dead)


def _identity(row: PreparedRow) -> tuple[str, Position, int]:
    return row.key


@dataclass(frozen=True, slots=True)
class Done:
    batch: Batch
    inserted: int
    committed_ms: int
    # Entries whose values the warehouse refused, dead-lettered instead.
    refused: list[DeadLetter]


def write_batch(writer: WarehouseWriter, batch: Batch) -> tuple[int, list[DeadLetter]]:
    """The batch in one transaction; if the warehouse refuses a value, each row alone, so only
    the refused ones become dead letters (with their raw record) and the rest go on."""
    try:
        return writer.write(batch.rows, batch.dead), []
    except EntryRejected:
        pass
    by_offset = {(r.topic, r.partition, r.offset): r for r in batch.records}
    inserted, refused = 0, []
    for row in batch.rows:
        try:
            inserted += writer.write([row], [])
        except EntryRejected as exc:
            record = by_offset[row.where]
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            refused.append(DeadLetter(record, f"{where}: the warehouse refused a value: {exc}"))
    writer.write([], [*batch.dead, *refused])
    return inserted, refused


class WarehouseLane:
    def __init__(self, writer: WarehouseWriter, depth: int = DEPTH) -> None:
        self._writer = writer
        self._todo: queue.Queue[Batch | None] = queue.Queue(maxsize=depth)
        self._done: queue.Queue[Done] = queue.Queue()
        self._error: BaseException | None = None
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="bookaudit-warehouse", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._todo.get()) is not None:
            try:
                inserted, refused = write_batch(self._writer, batch)
            except BaseException as exc:  # handed to the caller's thread, which raises it
                self._error = exc
                return
            self._done.put(Done(batch, inserted, time.time_ns() // 1_000_000, refused))
            self._todo.task_done()

    @property
    def busy(self) -> bool:
        """A batch is being written or waits for the lane (a failed lane counts as idle, so the
        caller's next submit raises its error)."""
        return self._error is None and self._todo.unfinished_tasks > 0

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, batch: Batch) -> None:
        """Queue a batch; waits while the lane is `depth` batches behind."""
        while True:
            self._raise_if_failed()
            try:
                self._todo.put(batch, timeout=0.1)
                self._in_flight += 1
                return
            except queue.Full:
                continue

    def finished(self, wait: bool = False) -> list[Done]:
        """Batches committed since the last call, in order; with `wait`, every one submitted."""
        out: list[Done] = []
        while True:
            try:
                out.append(self._done.get(timeout=0.1 if wait and self._in_flight else 0))
                self._in_flight -= 1
            except queue.Empty:
                self._raise_if_failed()
                if not (wait and self._in_flight):
                    return out

    def close(self) -> None:
        """Stop after the batches already queued; a failed lane has stopped already."""
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()
