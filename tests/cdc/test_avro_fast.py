"""The fast envelope writer produces exactly fastavro's bytes, so fastavro readers decode it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from bookaudit.cdc.transactions import TransactionAssembler
from bookaudit.kafka._avro_fast import EnvelopeWriter, check_schema_shape
from bookaudit.kafka.serde import (
    ENVELOPE_SCHEMA,
    KEY_SCHEMA,
    SourceInfo,
    encode,
    envelope,
    row_key,
)
from bookaudit.model import RowChange
from tests.cdc.fixtures import TEST_KEY, signed
from tests.cdc.test_envelope import change
from tests.cdc.test_transactions import resolve


def _captured_changes() -> list[RowChange]:
    assembler = TransactionAssembler(resolve, TEST_KEY)
    return [o for lsn, m in signed() for o in assembler.feed(lsn, m) if isinstance(o, RowChange)]


def _variants() -> list[dict[str, Any]]:
    base = envelope(change(), SourceInfo("bookings", "db"), now_ms=1_795_000_000_000)
    out = [base]
    mutations: tuple[Callable[[dict[str, Any]], object], ...] = (
        lambda e: e.update(before=None),
        lambda e: e.update(after=None, before=None, op="t"),
        lambda e: e.update(after={}, before={"x": None}),
        lambda e: e.update(transaction=None),
        lambda e: e.update(unchanged_toast=["body", "blob"]),
        lambda e: e.update(columns=[]),
        lambda e: e["source"].update(txId=2**63 - 1, lsn=0, commit_lsn=2**40, sequence=511),
        lambda e: e["source"].update(sequence=512, ts_ms=-1),
        lambda e: e["actor"].update({k: None for k in e["actor"]} | {"origin": "db_session"}),
        lambda e: e["after"].update(memo="ünïcödé ✓ " * 40, price="-0.00"),
    )
    for mutate in mutations:
        variant = copy.deepcopy(base)
        mutate(variant)
        out.append(variant)
    return out


@pytest.mark.parametrize("index", range(11))
def test_synthetic_envelopes_match_fastavro_bytes(index: int) -> None:
    env = _variants()[index]
    assert EnvelopeWriter().envelope(env) == encode(ENVELOPE_SCHEMA, env)


def test_every_captured_change_matches_fastavro_bytes_and_keys() -> None:
    writer = EnvelopeWriter()  # one writer across tables exercises its caches
    changes = _captured_changes()
    assert len(changes) == 8
    for c in changes * 2:
        env = envelope(c, SourceInfo("bookings", "db"), now_ms=7)
        assert writer.envelope(env) == encode(ENVELOPE_SCHEMA, env)
        key = row_key(c)
        if key is not None:
            assert writer.key(key) == encode(KEY_SCHEMA, key)


def test_key_with_null_and_empty_columns() -> None:
    keys: list[dict[str, Any]] = [{"columns": []}, {"columns": [{"name": "a", "value": None}]}]
    for key in keys:
        assert EnvelopeWriter().key(key) == encode(KEY_SCHEMA, key)


def test_a_schema_whose_fields_moved_is_refused() -> None:
    swapped = copy.deepcopy(ENVELOPE_SCHEMA)
    swapped["fields"][0], swapped["fields"][1] = swapped["fields"][1], swapped["fields"][0]
    with pytest.raises(RuntimeError, match="envelope schema fields"):
        check_schema_shape(swapped, KEY_SCHEMA)
