"""The audit chain's one definition: each row's canonical form and leaf hash, and each link's hash.

The audit writer computes these as it writes, and `warehouse verify` recomputes them from the
stored rows, so both import this module and nothing else defines the form.

A row's **leaf** is the SHA-256 of its canonical form: four compact JSON texts (sorted object
keys, no spaces, UTF-8) joined by newlines, which JSON text never holds unescaped:
`[form, <every other column in SCALAR_COLUMNS order>, <its field rows in position order>]`,
then row_key, before and after. Positions are integers and timestamps integer microseconds
since the epoch, so no text form that a session setting changes (TimeZone, DateStyle) enters
the hash. The writer stores the same three JSON texts it hashes, so it encodes each once.

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

# The jsonb columns, hashed as their own JSON texts after the rest.
JSONB_COLUMNS: tuple[str, ...] = ("row_key", "before", "after")
SCALAR_COLUMNS: tuple[str, ...] = tuple(c for c in CHAINED_COLUMNS if c not in JSONB_COLUMNS)
SCALAR_INDEX = tuple(CHAINED_COLUMNS.index(c) for c in SCALAR_COLUMNS)
JSONB_INDEX = tuple(CHAINED_COLUMNS.index(c) for c in JSONB_COLUMNS)

ROW_FORM = "bookaudit.row/2"
LEAF_BYTES = 32
GENESIS = hashlib.sha256(b"bookaudit audit chain v2").digest()

_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
# JSONEncoder.encode builds a new C encoder on every call, which costs more than encoding a
# small row; the writer encodes four values per row, so the C encoder is built once. Same
# output (tests/test_chain.py); without the C accelerator, JSONEncoder.encode is used.
_MAKE_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # undocumented, CPython's
_C_ENCODE = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
)


def dump_json(value: Any) -> str:
    """The one JSON encoding the chain hashes, and the text the writer stores in jsonb columns:
    compact, sorted keys, UTF-8 text (no \\u escapes beyond JSON's own)."""
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


FieldRow = tuple[str, int, str | None, str | None]
"""One audit.field_changes row: field, position, old value, new value."""


def canonical(row: Sequence[Any], fields: Sequence[FieldRow]) -> bytes:
    """The bytes a row change's leaf hashes: `row` holds CHAINED_COLUMNS' values in order
    (LSNs as ints, timestamps as epoch microseconds, jsonb as dicts), `fields` its field rows
    in position order."""
    return canonical_of(
        [row[i] for i in SCALAR_INDEX], fields, [dump_json(row[i]) for i in JSONB_INDEX]
    )


def canonical_of(
    scalars: Sequence[Any], fields: Sequence[FieldRow], jsonb_texts: Sequence[str]
) -> bytes:
    """`canonical` from SCALAR_COLUMNS' values and the dump_json texts of JSONB_COLUMNS, which
    the writer has already encoded for storing."""
    return "\n".join((dump_json([ROW_FORM, *scalars, fields]), *jsonb_texts)).encode()


def leaf(row: Sequence[Any], fields: Sequence[FieldRow]) -> bytes:
    return hashlib.sha256(canonical(row, fields)).digest()


def leaf_of(
    scalars: Sequence[Any], fields: Sequence[FieldRow], jsonb_texts: Sequence[str]
) -> bytes:
    return hashlib.sha256(canonical_of(scalars, fields, jsonb_texts)).digest()


def link_hash(prev_hash: bytes, leaves: bytes) -> bytes:
    """A link's hash from the one before it and its concatenated leaves."""
    return hashlib.sha256(prev_hash + hashlib.sha256(leaves).digest()).digest()


def split_leaves(leaves: bytes) -> list[bytes]:
    return [leaves[i : i + LEAF_BYTES] for i in range(0, len(leaves), LEAF_BYTES)]
