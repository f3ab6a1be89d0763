"""A specialised Avro binary reader for the envelope, giving what fastavro.schemaless_reader gives.

fastavro took about 55-80 µs per 10-column envelope on the audit writer's hot path (most of it
resolving the schema and its unions on every call); this reader knows the schema's shape, as the
fast writer does, and takes about half. fastavro stays the reference: tests decode many envelopes
both ways and compare, and `check_schema_shape` ties both fast paths to the .avsc field order.
Bytes that do not follow the schema raise ValueError or IndexError; the caller names the record.
"""

from __future__ import annotations

from typing import Any


def _long(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    n = b & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _str(data: bytes, pos: int) -> tuple[str, int]:
    b = data[pos]
    if b < 0x80:
        n = b >> 1
        if b & 1:
            raise ValueError("negative string length")
        pos += 1
    else:
        n, pos = _long(data, pos)
        if n < 0:
            raise ValueError("negative string length")
    end = pos + n
    if end > len(data):
        raise ValueError("string runs past the end of the record")
    return data[pos:end].decode(), end


def _opt_str(data: bytes, pos: int) -> tuple[str | None, int]:
    b = data[pos]
    if b == 0:
        return None, pos + 1
    if b != 2:
        raise ValueError(f"bad union index {b}")
    return _str(data, pos + 1)


def _value_map(data: bytes, pos: int) -> tuple[dict[str, str | None], int]:
    """A map of nullable strings: the before and after images. The one-byte length case, by
    far the most common, is read inline: this loop runs for every column of every change."""
    out: dict[str, str | None] = {}
    size = len(data)
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            return out, pos
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            b = data[pos]
            if b < 0x80 and not b & 1:
                end = pos + 1 + (b >> 1)
                if end > size:
                    raise ValueError("string runs past the end of the record")
                key = data[pos + 1 : end].decode()
                pos = end
            else:
                key, pos = _str(data, pos)
            b = data[pos]
            if b == 0:
                out[key] = None
                pos += 1
                continue
            if b != 2:
                raise ValueError(f"bad union index {b}")
            b = data[pos + 1]
            if b < 0x80 and not b & 1:
                end = pos + 2 + (b >> 1)
                if end > size:
                    raise ValueError("string runs past the end of the record")
                out[key] = data[pos + 2 : end].decode()
                pos = end
            else:
                out[key], pos = _str(data, pos + 1)


def _opt_map(data: bytes, pos: int) -> tuple[dict[str, str | None] | None, int]:
    b = data[pos]
    if b == 0:
        return None, pos + 1
    if b != 2:
        raise ValueError(f"bad union index {b}")
    return _value_map(data, pos + 1)


_TAIL_CACHE = 4096
# A tail's columns (as fastavro reads them), unchanged TOAST names and column names.
Tail = tuple[tuple[dict[str, Any], ...], tuple[str, ...], tuple[str, ...]]
_TAILS: dict[bytes, Tail] = {}


def _read_tail(data: bytes, pos: int) -> Tail:
    columns: list[dict[str, Any]] = []
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            cname, pos = _str(data, pos)
            ctype, pos = _str(data, pos)
            key = data[pos]
            if key > 1:
                raise ValueError("bad boolean")
            pos += 1
            columns.append({"name": cname, "type": ctype, "key": key == 1})
    toast: list[str] = []
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            t, pos = _str(data, pos)
            toast.append(t)
    return tuple(columns), tuple(toast), tuple(c["name"] for c in columns)


# The envelope's fields in schema order, as _read_fields returns them.
Fields = tuple[
    dict[str, str | None] | None,  # before
    dict[str, str | None] | None,  # after
    str, str, str, str, str, str,  # source: version, connector, name, db, schema, table
    int, int, int, int, int,  # source: txId, lsn, commit_lsn, sequence, ts_ms
    str, str,  # source: snapshot, mode
    str, int,  # op, ts_ms
    tuple[str, int, int] | None,  # transaction: id, total_order, data_collection_order
    tuple[str | None, ...],  # actor, in schema order (origin last)
    Tail,
]  # fmt: skip


# Runs of bytes that repeat from one envelope to the next are parsed once and recognised after:
# a table's source names, the snapshot/mode/op strings, and what follows the transaction block
# (the actor, the same for a whole transaction, then the table's columns).
_RESTS: dict[bytes, tuple[tuple[str | None, ...], Tail]] = {}


class _Seen:
    """The last run of strings read at one place in the envelope, with its bytes."""

    def __init__(self) -> None:
        self.raw = b""
        self.strings: tuple[str, ...] = ()


_NAMES = _Seen()  # source: version, connector, name, db, schema, table
_FLAGS = _Seen()  # source: snapshot, mode; op


def _strings(data: bytes, pos: int, seen: _Seen, n: int) -> tuple[tuple[str, ...], int]:
    """`n` strings from `pos`: the ones `seen` last held when the bytes are the same."""
    raw = seen.raw
    if raw and data.startswith(raw, pos):
        return seen.strings, pos + len(raw)
    start = pos
    out = []
    for _ in range(n):
        text, pos = _str(data, pos)
        out.append(text)
    seen.raw = data[start:pos]
    seen.strings = tuple(out)
    return seen.strings, pos


def _read_rest(data: bytes, pos: int) -> tuple[tuple[str | None, ...], Tail]:
    actor: list[str | None] = []
    for _ in range(8):
        value, pos = _opt_str(data, pos)
        actor.append(value)
    origin, pos = _str(data, pos)
    actor.append(origin)
    tail = data[pos:]
    parsed = _TAILS.get(tail)
    if parsed is None:
        parsed = _read_tail(data, pos)
        if len(_TAILS) >= _TAIL_CACHE:
            _TAILS.clear()
        _TAILS[tail] = parsed
    return tuple(actor), parsed


def _read_fields(data: bytes) -> Fields:
    long_ = _long
    before, pos = _opt_map(data, 0)
    after, pos = _opt_map(data, pos)
    names, pos = _strings(data, pos, _NAMES, 6)
    version, connector, name, db, schema, table = names
    txid, pos = long_(data, pos)
    lsn, pos = long_(data, pos)
    commit_lsn, pos = long_(data, pos)
    sequence, pos = long_(data, pos)
    src_ts, pos = long_(data, pos)
    flags, pos = _strings(data, pos, _FLAGS, 3)
    snapshot, mode, op = flags
    ts_ms, pos = long_(data, pos)
    transaction: tuple[str, int, int] | None = None
    b = data[pos]
    if b == 0:
        pos += 1
    elif b == 2:
        tid, pos = _str(data, pos + 1)
        total, pos = long_(data, pos)
        dco, pos = long_(data, pos)
        transaction = (tid, total, dco)
    else:
        raise ValueError(f"bad union index {b}")
    rest = data[pos:]
    found = _RESTS.get(rest)
    if found is None:
        found = _read_rest(data, pos)
        if len(_RESTS) >= _TAIL_CACHE:
            _RESTS.clear()
        _RESTS[rest] = found
    actor, parsed = found
    return (
        before, after, version, connector, name, db, schema, table, txid, lsn, commit_lsn,
        sequence, src_ts, snapshot, mode, op, ts_ms, transaction, actor, parsed,
    )  # fmt: skip


def read_envelope(data: bytes) -> dict[str, Any]:
    """The envelope record as fastavro reads it: the same dict, key for key."""
    (
        before, after, version, connector, name, db, schema, table, txid, lsn, commit_lsn,
        sequence, src_ts, snapshot, mode, op, ts_ms, transaction, actor, tail,
    ) = _read_fields(data)  # fmt: skip
    return {
        "before": before,
        "after": after,
        "source": {
            "version": version,
            "connector": connector,
            "name": name,
            "db": db,
            "schema": schema,
            "table": table,
            "txId": txid,
            "lsn": lsn,
            "commit_lsn": commit_lsn,
            "sequence": sequence,
            "ts_ms": src_ts,
            "snapshot": snapshot,
            "mode": mode,
        },
        "op": op,
        "ts_ms": ts_ms,
        "transaction": None
        if transaction is None
        else dict(zip(("id", "total_order", "data_collection_order"), transaction, strict=True)),
        "actor": dict(zip(ACTOR_FIELDS, actor, strict=True)),
        "columns": list(tail[0]),  # the column dicts are shared between envelopes: read-only
        "unchanged_toast": list(tail[1]),
    }


ACTOR_FIELDS = (
    "id", "role", "reason", "approval_ref", "request_id", "application", "db_user",
    "client_addr", "origin",
)  # fmt: skip
"""The envelope's actor record's fields, in schema order."""

Change = tuple[
    dict[str, str | None] | None,  # before
    dict[str, str | None] | None,  # after
    str, str, str,  # source name, schema, table
    int, int, int, int, int,  # txId, lsn, commit_lsn, sequence, source ts_ms
    str, str,  # mode, op
    tuple[str | None, ...],  # actor, in ACTOR_FIELDS order
    tuple[str, ...],  # column names in table order (empty when the envelope lists none)
]  # fmt: skip


def read_change(data: bytes) -> Change:
    """What the audit writer stores of an envelope, read as read_envelope reads it (it checks the
    same bytes), without building the record's dicts."""
    f = _read_fields(data)
    return (f[0], f[1], f[4], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[14], f[15],
            f[18], f[19][2])  # fmt: skip


def read_key(data: bytes) -> dict[str, Any]:
    """The key record as fastavro reads it: {"columns": [{"name": ..., "value": ...}, ...]}."""
    columns: list[dict[str, Any]] = []
    pos = 0
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            return {"columns": columns}
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            name, pos = _str(data, pos)
            value, pos = _opt_str(data, pos)
            columns.append({"name": name, "value": value})


def read_key_row(data: bytes) -> dict[str, str | None]:
    """The key's columns as one {name: value} dict, without read_key's dict per column."""
    row: dict[str, str | None] = {}
    pos = 0
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            return row
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            name, pos = _str(data, pos)
            row[name], pos = _opt_str(data, pos)
