"""Kafka edge of the consumers: subscribe, poll batches, notice idleness, commit offsets."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bookaudit.classify import kafka_error, kafka_logger
from bookaudit.consumers.chunks import Reassembler
from bookaudit.consumers.records import Record
from bookaudit.errors import TransientError
from bookaudit.kafka.chunks import CHUNK_HEADER
from bookaudit.kafka.serde import Header, Headers, topic_part

# How long the cluster may take to answer the first metadata request before it counts as down.
# A busy broker can take tens of seconds; an unreachable one is only told apart by this timeout.
CONNECT_TIMEOUT_S = 60.0
# How long one broker query for end or committed offsets may take before it is asked again.
OFFSETS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ConsumerSettings:
    bootstrap: str
    group_id: str
    topic_prefix: str
    batch_size: int = 500
    poll_timeout_s: float = 1.0
    # Only these schema.table topics; empty means every table under the prefix.
    tables: tuple[str, ...] = ()
    # Return a batch as soon as one record is there, with whatever else is already fetched,
    # instead of waiting for a full batch or the timeout: a trickle of changes then reaches the
    # warehouse at once, and a backlog still comes in full batches from the prefetch queue.
    eager: bool = True


def _topic_tail(table: str) -> str:
    """`schema.table` as its topic names it (serde.topic_part)."""
    schema, _, name = table.partition(".")
    return f"{topic_part(schema)}.{topic_part(name)}"


def change_topics_pattern(prefix: str, tables: Sequence[str] = ()) -> str:
    """`<prefix>.<schema>.<table>` only, so alert and other topics under the prefix stay out."""
    head = "^" + re.escape(prefix).replace("\\.", "[.]") + "[.]"
    if tables:
        names = "|".join(re.escape(_topic_tail(t)).replace("\\.", "[.]") for t in tables)
        return head + "(" + names + ")$"
    return head + "[^.]+[.][^.]+$"


# Offset commits refused because the group moved on (a rebalance), not because Kafka failed.
_MOVED_ON = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)


def _headers(raw: Mapping[str, str | bytes | None] | Sequence[Header] | None) -> Headers:
    if raw is None:
        return ()
    return tuple(raw.items()) if isinstance(raw, Mapping) else tuple(raw)


def to_record(msg: Message) -> Record:
    """The parts of a fetched message processing needs, headers included."""
    return Record(
        str(msg.topic()),
        int(msg.partition() or 0),
        int(msg.offset() or 0),
        msg.key(),
        msg.value(),
        _headers(msg.headers()),
    )


class KafkaSource:
    """Wraps a consumer with manual offsets: offsets move only when `commit` is called."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self._settings = settings
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "session.timeout.ms": 10000,
                # A new table's topic is found at the next metadata refresh (the subscription is
                # a pattern), so a short interval puts its first change in the warehouse within
                # about a second; a metadata request is small.
                "topic.metadata.refresh.interval.ms": 250,
                # A fetch that waits for data delays the next one, which is the first to ask for
                # a partition assigned meanwhile (a new table's); an idle fetch costs little.
                "fetch.wait.max.ms": 100,
                "logger": kafka_logger(),
            }
        )
        self._processed: dict[tuple[str, int], int] = {}
        self._synced: dict[tuple[str, int], int] = {}
        self._sent: dict[tuple[str, int], int] = {}  # what commit_processed last sent
        self._chunks = Reassembler()
        self._pattern = re.compile(change_topics_pattern(settings.topic_prefix, settings.tables))
        try:
            # An unreachable cluster must fail here, not pass for an idle one later.
            metadata = self._consumer.list_topics(timeout=CONNECT_TIMEOUT_S)
            # What `--exit-when-idle` waits for: everything in the topics now, and nothing later.
            self._targets = self._end_offsets(metadata)
        except KafkaException as exc:
            self._consumer.close()
            raise kafka_error(f"Kafka at {settings.bootstrap} is unreachable", exc) from None
        self._consumer.subscribe(
            [change_topics_pattern(settings.topic_prefix, settings.tables)],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )

    def _end_offsets(self, metadata: Any) -> dict[tuple[str, int], int]:
        """The end offset of every partition of the topics this consumer reads, as they are now;
        empty partitions left out."""
        ends: dict[tuple[str, int], int] = {}
        for name, topic in metadata.topics.items():
            if not self._pattern.match(name) or topic.error is not None:
                continue
            for partition in topic.partitions:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(name, partition), timeout=OFFSETS_TIMEOUT_S, cached=False
                )
                if high > low:
                    ends[(name, partition)] = high
        return ends

    def caught_up(self) -> bool:
        """Everything up to the end offsets noted at start is committed by the group, by this
        member or another. Exact, and no timer: a group that is slow to join is waited for."""
        pending = [TopicPartition(t, p) for (t, p) in self._targets]
        if not pending:
            return True
        try:
            committed = self._consumer.committed(pending, timeout=OFFSETS_TIMEOUT_S)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise kafka_error("cannot read the group's committed offsets", error) from None
            return False  # a rebalance or a slow coordinator: ask again on the next idle poll
        for tp in committed:
            if tp.error is None and tp.offset >= self._targets[(tp.topic, tp.partition)]:
                del self._targets[(tp.topic, tp.partition)]
        return not self._targets

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        assigned = {(p.topic, p.partition) for p in partitions}
        self._chunks.forget(assigned)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._chunks.forget((p.topic, p.partition) for p in partitions)

    def poll(self, timeout: float | None = None) -> list[Record]:
        """Up to a batch of records, waiting at most `timeout` (the settings' poll timeout if
        None) for the first."""
        size = self._settings.batch_size
        timeout = self._settings.poll_timeout_s if timeout is None else timeout
        if self._settings.eager:
            first = self._consumer.poll(timeout)
            messages = [] if first is None else [first]
            if first is not None and size > 1:
                messages += self._consumer.consume(num_messages=size - 1, timeout=0)
        else:
            messages = self._consumer.consume(num_messages=size, timeout=timeout)
        records: list[Record] = []
        for msg in messages:
            err = msg.error()
            if err is None:
                record = to_record(msg)
                header = _chunk_header(record.headers)
                if header is None and not self._chunks.waiting:
                    # A plain record and no chunked event open, as nearly every record comes:
                    # what feed would give, without its generator.
                    records.append(record)
                else:
                    records.extend(self._chunks.feed(record, header))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # a topic matched by the pattern before it had partitions
            else:
                raise kafka_error("Kafka consumer error", err)
        return records

    def commit(self, records: Sequence[Record], asynchronous: bool = False) -> None:
        """Commit the next offset of each partition seen (synchronously unless asked)."""
        self._commit(self.processed(records), asynchronous)

    def processed(self, records: Sequence[Record]) -> dict[tuple[str, int], int]:
        """Note records as done (their offsets may be committed from now on), without
        committing; returns the highest offset of each of their partitions."""
        high: dict[tuple[str, int], int] = {}
        for r in records:
            high[(r.topic, r.partition)] = max(high.get((r.topic, r.partition), -1), r.offset)
        for tp, offset in high.items():
            self._processed[tp] = max(self._processed.get(tp, -1), offset)
        return high

    def commit_processed(self) -> None:
        """Asynchronously commit what was noted as processed since the last such commit, of the
        partitions this member still holds (a partition's next owner commits its own progress,
        which an older offset from here would only set back)."""
        held = {(p.topic, p.partition) for p in self._consumer.assignment()}
        todo = {
            tp: o for tp, o in self._processed.items() if tp in held and self._sent.get(tp) != o
        }
        self._commit(todo, asynchronous=True)
        self._sent.update(todo)

    def commit_all(self) -> None:
        """Synchronously commit what was processed of the partitions this member still holds,
        after asynchronous commits; nothing when that is already committed."""
        held = {(p.topic, p.partition) for p in self._consumer.assignment()}
        todo = {
            tp: o for tp, o in self._processed.items() if tp in held and self._synced.get(tp) != o
        }
        self._commit(todo, asynchronous=False)
        self._synced.update(todo)

    def _commit(self, high: dict[tuple[str, int], int], asynchronous: bool) -> None:
        if not high:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in high.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() in _MOVED_ON:
                # A rebalance took these partitions away while the batch was written. Their next
                # owner re-reads from the last committed offset, and the warehouse drops the
                # copies, so there is nothing to retry and no reason to stop.
                return
            # The warehouse already holds the batch and dedupes a replay, so this only costs
            # re-reading it after a rebalance.
            raise TransientError(f"offset commit failed: {exc.args[0]}") from None

    def close(self) -> None:
        self._consumer.close()


def _chunk_header(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == CHUNK_HEADER:
            if value is None:
                return b""
            return value.encode() if isinstance(value, str) else bytes(value)
    return None
