"""Pure reassembly of chunked events (kafka/chunks.py): chunks in, whole records out.

A whole event comes out as one Record at its last chunk's offset, so committing it commits every
chunk. A group cut short (the capture died mid-event and will send it again whole) comes out as
a Record with `error` set at its first chunk's offset, so it is dead-lettered, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from bookaudit.consumers.records import Record
from bookaudit.errors import DecodeError
from bookaudit.kafka.chunks import ChunkId, parse_header


@dataclass
class _Group:
    id: ChunkId
    first: Record
    parts: list[bytes] = field(default_factory=list)


@dataclass
class Reassembler:
    _open: dict[tuple[str, int], _Group] = field(default_factory=dict)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop half-read groups of partitions this consumer no longer reads from where it was
        (a rebalance): they are read again from the committed offset."""
        for tp in partitions:
            self._open.pop(tp, None)

    @property
    def waiting(self) -> bool:
        return bool(self._open)

    def feed(self, record: Record, header: bytes | None) -> Iterator[Record]:
        """Records ready to process, in partition order, after this one arrived."""
        tp = (record.topic, record.partition)
        if header is None:
            yield from self._abandon(tp, "the chunked event was cut short by a plain record")
            yield record
            return
        try:
            chunk = parse_header(header)
        except DecodeError as exc:
            yield from self._abandon(tp, "the chunked event was cut short by a bad chunk")
            yield replace(record, error=str(exc))
            return
        group = self._open.get(tp)
        if chunk.index == 0:
            yield from self._abandon(tp, "a new chunked event began before this one ended")
            group = self._open[tp] = _Group(chunk, record)
        elif group is None or group.id.group != chunk.group or len(group.parts) != chunk.index:
            yield from self._abandon(tp, "the chunked event was cut short by a stray chunk")
            yield replace(
                record,
                error=f"chunk {chunk.index + 1} of {chunk.count} without the chunks before it",
            )
            return
        group.parts.append(record.value or b"")
        if len(group.parts) == chunk.count:
            del self._open[tp]
            yield replace(record, value=b"".join(group.parts))

    def _abandon(self, tp: tuple[str, int], why: str) -> Iterator[Record]:
        group = self._open.pop(tp, None)
        if group is not None:
            yield replace(
                group.first,
                value=b"".join(group.parts),
                error=f"incomplete chunked event ({len(group.parts)} of {group.id.count} chunks): "
                f"{why}",
            )
