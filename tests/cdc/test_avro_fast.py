"""The fast envelope writer, fed a RowChange, produces exactly fastavro's bytes for the same
change, so fastavro readers decode it."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from bookaudit.kafka._avro_fast import EnvelopeWriter, check_schema_shape
from bookaudit.kafka.serde import ENVELOPE_SCHEMA, KEY_SCHEMA, encode, envelope_record, key_record
from bookaudit.model import SourceInfo
from tests.cdc.fixtures import NOW_MS, SOURCE, captured_changes, change, variants


@pytest.mark.parametrize("index", range(11))
def test_synthetic_changes_match_fastavro_bytes(index: int) -> None:
    c = variants()[index]
    expected = encode(ENVELOPE_SCHEMA, envelope_record(c, SOURCE, NOW_MS))
    assert EnvelopeWriter().envelope(c, SOURCE, NOW_MS) == expected


def test_one_writer_across_sources_and_modes_matches_fastavro() -> None:
    """The writer caches per (source, table): a second source or mode must not reuse the first's."""
    writer = EnvelopeWriter()
    for source in (SOURCE, SourceInfo("other", "db2"), SourceInfo("bookings", "db", "trigger")):
        for c in variants():
            expected = encode(ENVELOPE_SCHEMA, envelope_record(c, source, 7))
            assert writer.envelope(c, source, 7) == expected


def test_every_captured_change_matches_fastavro_bytes_and_keys() -> None:
    writer = EnvelopeWriter()  # one writer across tables exercises its caches
    changes = captured_changes()
    assert len(changes) == 8
    for c in changes * 2:
        expected = encode(ENVELOPE_SCHEMA, envelope_record(c, SOURCE, 7))
        assert writer.envelope(c, SOURCE, 7) == expected
        key = key_record(c)
        if key is not None:
            assert writer.key(c) == encode(KEY_SCHEMA, key)


def test_key_with_null_and_empty_columns() -> None:
    no_key = replace(change(), table=replace(change().table, key=()))
    null_key = replace(
        change(), after={"booking_id": None}, table=replace(change().table, key=("booking_id",))
    )
    for c in (no_key, null_key):
        key = key_record(c)
        assert key is not None
        assert EnvelopeWriter().key(c) == encode(KEY_SCHEMA, key)


def test_a_schema_whose_fields_moved_is_refused() -> None:
    swapped = copy.deepcopy(ENVELOPE_SCHEMA)
    swapped["fields"][0], swapped["fields"][1] = swapped["fields"][1], swapped["fields"][0]
    with pytest.raises(RuntimeError, match="envelope schema fields"):
        check_schema_shape(swapped, KEY_SCHEMA)
