"""The audit chain's one definition: each row's canonical form and leaf hash, and each link's hash.

The audit writer computes these as it writes, and `warehouse verify` recomputes them from the
stored rows, so both import this module and nothing else defines the form.

A row's **leaf** is the SHA-256 of its canonical form: every stored column of the row change,
in `CHAINED_COLUMNS` order, then its field rows in position order, as compact JSON with sorted
object keys. Positions are integers and timestamps are integer microseconds since the epoch,
so no text form that a session setting changes (TimeZone, DateStyle) enters the hash.

A **link** covers the rows one writer transaction stored: its hash is
SHA-256(previous link's hash || SHA-256(leaf 1 || leaf 2 || ...)). The leaves are kept in the link,
so verify names each row whose content no longer gives its leaf, and the links form one chain,
whichever writer appended them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Each audit.row_changes column, in the order the canonical form lists them.
CHAINED_COLUMNS: tuple[str, ...] = (
    "id",
    "source",
    "commit_lsn",
    "sequence",
    "lsn",
    "txid",
    "committed_at",
    "schema_name",
    "table_name",
    "action",
    "row_key",
    "before",
    "after",
    "actor",
    "actor_role",
    "reason",
    "approval_ref",
    "request_id",
    "application",
    "db_user",
    "client_addr",
    "actor_origin",
    "capture_mode",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "recorded_at",
)

ROW_FORM = "bookaudit.row/2"
LEAF_BYTES = 32
GENESIS = hashlib.sha256(b"bookaudit audit chain v2").digest()

_dumps = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode

FieldRow = tuple[str, int, str | None, str | None]
"""One audit.field_changes row: field, position, old value, new value."""


def canonical(row: Sequence[Any], fields: Sequence[FieldRow]) -> bytes:
    """The bytes a row change's leaf hashes: `row` holds CHAINED_COLUMNS' values in order
    (LSNs as ints, timestamps as epoch microseconds, jsonb as dicts), `fields` its field rows
    in position order."""
    return _dumps([ROW_FORM, *row, [list(f) for f in fields]]).encode()


def leaf(row: Sequence[Any], fields: Sequence[FieldRow]) -> bytes:
    return hashlib.sha256(canonical(row, fields)).digest()


def link_hash(prev_hash: bytes, leaves: bytes) -> bytes:
    """A link's hash from the one before it and its concatenated leaves."""
    return hashlib.sha256(prev_hash + hashlib.sha256(leaves).digest()).digest()


def split_leaves(leaves: bytes) -> list[bytes]:
    return [leaves[i : i + LEAF_BYTES] for i in range(0, len(leaves), LEAF_BYTES)]
