"""The source guard's pure part: which records a binding admits, and the headers it reads."""

from __future__ import annotations

from bookaudit.consumers.records import Record
from bookaudit.consumers.sources import sort_out, source_of, sources_of, unbound
from bookaudit.kafka.serde import SCHEMA_HEADER, record_headers, to_kafka
from bookaudit.model import SourceInfo
from tests.cdc.fixtures import NOW_MS, change

NORTH = SourceInfo("bookings", "db", identity="7001/db")
SOUTH = SourceInfo("bookings", "db", identity="7002/db")


def _record(source: SourceInfo, offset: int) -> Record:
    k = to_kafka(change(), source, "p", NOW_MS)
    return Record(k.topic, 0, offset, k.key, k.value, k.headers)


def test_records_name_their_source_and_its_database() -> None:
    assert source_of(_record(NORTH, 1)) == ("bookings", "7001/db")
    # A source without an identity (an older capture) sends the schema header alone.
    assert record_headers(SourceInfo("bookings", "db")) == (
        (SCHEMA_HEADER, b"bookaudit.Envelope/1"),
    )
    assert source_of(_record(SourceInfo("bookings", "db"), 1)) is None


def test_the_first_database_seen_claims_a_name() -> None:
    records = [_record(SOUTH, 1), _record(NORTH, 2), _record(SOUTH, 3)]
    assert unbound(sources_of(records), {}) == {"bookings": "7002/db"}
    assert unbound(sources_of(records), {"bookings": "7001/db"}) == {}


def test_only_the_bound_database_is_admitted_and_the_rest_is_kept_as_dead_letters() -> None:
    records = [_record(NORTH, 1), _record(SOUTH, 2), _record(SourceInfo("bookings", "db"), 3)]
    admitted, refused = sort_out(records, sources_of(records), {"bookings": "7001/db"})
    assert [r.offset for r in admitted] == [1, 3]
    assert [d.record.offset for d in refused] == [2]
    assert refused[0].record == records[1]
    assert refused[0].error == (
        "p.public.booking_lines[0]@2: source 'bookings' belongs to database '7001/db' in this "
        "warehouse, but this event comes from '7002/db': give each capture its own "
        "--source-name, or run `bookaudit warehouse sources --release bookings` if this "
        "database took the source over"
    )
