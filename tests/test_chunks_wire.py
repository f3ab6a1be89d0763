"""An event too big for one Kafka message is split into ordered chunks with a parseable header."""

from __future__ import annotations

import pytest

from bookaudit.errors import DecodeError
from bookaudit.kafka.chunks import CHUNK_BYTES, MAX_MESSAGE_BYTES, ChunkId, parse_header, split


def test_a_value_that_fits_goes_as_it_is() -> None:
    assert split(b"x" * CHUNK_BYTES) == [(None, b"x" * CHUNK_BYTES)]


def test_a_big_value_is_cut_into_ordered_chunks_that_each_fit() -> None:
    value = bytes(range(256)) * 10_000  # 2.56 MB
    parts = split(value)
    assert len(parts) == 3
    ids = [c for c, _ in parts]
    assert all(c is not None for c in ids)
    assert [c.index for c in ids if c] == [0, 1, 2]
    assert {c.count for c in ids if c} == {3}
    assert len({c.group for c in ids if c}) == 1
    assert b"".join(p for _, p in parts) == value
    assert all(len(p) + 200 < MAX_MESSAGE_BYTES for _, p in parts)


def test_header_round_trip_and_malformed_headers() -> None:
    chunk = ChunkId("ab12", 1, 3)
    assert parse_header(chunk.header()) == chunk
    for bad in (b"", b"ab12", b"ab12:x:3", b"ab12:3:3", b":0:1", b"ab12:0:0"):
        with pytest.raises(DecodeError):
            parse_header(bad)
