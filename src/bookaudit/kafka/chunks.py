"""Pure splitting of an event too big for one Kafka message into ordered chunks, and the header
that lets a consumer put them back together.

Kafka refuses a message over the topic's `max.message.bytes` (about 1 MB by default), and an
UPDATE carries the old and the new row, so a 500 kB bytea (doubled as hex) already exceeds it.
Such an event is cut into consecutive messages with the same key, hence the same partition, in
produce order: each carries `bookaudit.chunk: <group>:<index>:<count>`. Consumers reassemble
them (consumers/chunks.py) and see one record, whose offset is the last chunk's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from bookaudit.errors import DecodeError

CHUNK_HEADER = "bookaudit.chunk"
# The producer's message.max.bytes: what librdkafka accepts for one record. Set deliberately to
# librdkafka's default and below the broker's default (1,048,588) so that one record always fits.
MAX_MESSAGE_BYTES = 1_000_000
# Each topic bookaudit creates says so explicitly, so a cluster with a smaller default still
# takes every chunk.
TOPIC_MAX_MESSAGE_BYTES = 1_048_588
# A value above this is chunked; the rest of MAX_MESSAGE_BYTES is room for the key and headers.
CHUNK_BYTES = 900_000


@dataclass(frozen=True, slots=True)
class ChunkId:
    group: str
    index: int
    count: int

    def header(self) -> bytes:
        return f"{self.group}:{self.index}:{self.count}".encode()


def split(value: bytes, size: int = CHUNK_BYTES) -> list[tuple[ChunkId | None, bytes]]:
    """The value as it is when it fits, else its chunks in order, each with its id."""
    if len(value) <= size:
        return [(None, value)]
    group = uuid.uuid4().hex
    parts = [value[i : i + size] for i in range(0, len(value), size)]
    return [(ChunkId(group, i, len(parts)), part) for i, part in enumerate(parts)]


def parse_header(raw: bytes | str) -> ChunkId:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    group, _, rest = text.partition(":")
    index_text, _, count_text = rest.partition(":")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise DecodeError(f"malformed {CHUNK_HEADER} header {text!r}") from None
    if not group or count < 1 or not 0 <= index < count:
        raise DecodeError(f"malformed {CHUNK_HEADER} header {text!r}")
    return ChunkId(group, index, count)
