"""Chunks come back together per partition; a cut-short group is dead-lettered, never dropped."""

from __future__ import annotations

from bookaudit.consumers.chunks import Reassembler
from bookaudit.consumers.records import Record
from bookaudit.kafka.chunks import ChunkId


def chunk(offset: int, group: str, index: int, count: int, value: bytes) -> tuple[Record, bytes]:
    return Record("p.s.t", 0, offset, b"k", value), ChunkId(group, index, count).header()


def feed_all(r: Reassembler, items: list[tuple[Record, bytes | None]]) -> list[Record]:
    out: list[Record] = []
    for record, header in items:
        out.extend(r.feed(record, header))
    return out


def test_whole_event_comes_out_once_at_its_last_offset() -> None:
    r = Reassembler()
    out = feed_all(
        r,
        [
            (Record("p.s.t", 0, 9, b"k", b"plain"), None),
            chunk(10, "g", 0, 3, b"ab"),
            chunk(11, "g", 1, 3, b"cd"),
        ],
    )
    assert [o.value for o in out] == [b"plain"]
    assert r.waiting
    out = feed_all(r, [chunk(12, "g", 2, 3, b"ef")])
    assert [(o.offset, o.value, o.error) for o in out] == [(12, b"abcdef", None)]
    assert not r.waiting


def test_partitions_are_reassembled_apart() -> None:
    r = Reassembler()
    a0, h0 = chunk(1, "a", 0, 2, b"A0")
    b0 = Record("p.s.t", 1, 1, b"k", b"B0")
    a1, h1 = chunk(2, "a", 1, 2, b"A1")
    out = feed_all(r, [(a0, h0), (b0, None), (a1, h1)])
    assert [(o.partition, o.value) for o in out] == [(1, b"B0"), (0, b"A0A1")]


def test_a_group_cut_short_is_dead_lettered_and_the_resend_goes_through() -> None:
    r = Reassembler()
    out = feed_all(
        r,
        [
            chunk(5, "old", 0, 3, b"x"),
            chunk(6, "old", 1, 3, b"y"),
            # The capture died and sent the event again whole, as a new group.
            chunk(7, "new", 0, 2, b"X"),
            chunk(8, "new", 1, 2, b"Y"),
        ],
    )
    assert [(o.offset, o.error is not None) for o in out] == [(5, True), (8, False)]
    assert out[0].value == b"xy" and "2 of 3" in (out[0].error or "")
    assert out[1].value == b"XY"


def test_a_stray_chunk_or_bad_header_is_dead_lettered() -> None:
    r = Reassembler()
    stray, header = chunk(3, "g", 1, 2, b"?")
    out = feed_all(r, [(stray, header), (Record("p.s.t", 0, 4, None, b"v"), b"nonsense")])
    assert [o.offset for o in out] == [3, 4]
    assert all(o.error for o in out)


def test_a_rebalance_forgets_half_read_groups() -> None:
    r = Reassembler()
    feed_all(r, [chunk(1, "g", 0, 2, b"a")])
    r.forget([("p.s.t", 0)])
    assert not r.waiting
