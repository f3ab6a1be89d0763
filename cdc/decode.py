"""Pure pgoutput decoder: bytes of the logical replication stream in, typed messages out, no I/O.

Wire formats follow "Logical Replication Message Formats" of the PostgreSQL manual for
proto_version 1 and 2 without streaming (we never ask for `streaming 'on'`), and the
"Streaming Replication Protocol" CopyData framing ('w' XLogData, 'k' keepalive).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bookaudit.errors import DecodeError

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000

# A column value in a TupleData: None for SQL NULL, UNCHANGED_TOAST for 'u', else the text form.
UNCHANGED_TOAST = object()
Value = str | None | object


@dataclass(frozen=True, slots=True)
class XLogData:
    """'w' CopyData: one pgoutput message starting at wal_start."""

    wal_start: int
    wal_end: int
    send_time_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """'k' CopyData: the server's WAL end, and whether it wants a status update now."""

    wal_end: int
    send_time_us: int
    reply_requested: bool


@dataclass(frozen=True, slots=True)
class Begin:
    """'B': final_lsn Int64, commit timestamp Int64 (µs since 2000-01-01), xid Int32."""

    final_lsn: int
    commit_ts_us: int
    xid: int

    @property
    def commit_time(self) -> datetime:
        return PG_EPOCH + timedelta(microseconds=self.commit_ts_us)

    @property
    def commit_unix_ms(self) -> int:
        return (self.commit_ts_us + _PG_EPOCH_UNIX_US) // 1000


@dataclass(frozen=True, slots=True)
class Commit:
    """'C': flags Int8, commit_lsn Int64, end_lsn Int64, commit timestamp Int64."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    """'O': commit LSN on the origin server Int64, origin name String."""

    origin_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation: flags (1 = part of the replica identity), name, type oid, typmod."""

    is_identity: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    """'R': oid Int32, namespace String, name String, replica identity Int8, columns."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """'Y': a non-builtin type: oid Int32, namespace String, name String."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """'I': relation oid Int32, 'N', new TupleData."""

    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """'U': relation oid Int32, optional 'K' key or 'O' old TupleData, then 'N' new TupleData."""

    relation_oid: int
    old: tuple[Value, ...] | None
    old_is_key_only: bool
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """'D': relation oid Int32, then 'K' key or 'O' old TupleData."""

    relation_oid: int
    old: tuple[Value, ...]
    old_is_key_only: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    """'T': relation count Int32, options Int8 (1 CASCADE, 2 RESTART IDENTITY), oids Int32[]."""

    options: int
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """'M': flags Int8 (1 = transactional), lsn Int64, prefix String, length Int32, content."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)

_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")
_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!Qq?")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!bQQq")


class _Reader:
    """A cursor over one message; every read checks bounds so truncated input fails cleanly."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        if self.pos + fmt.size > len(self.buf):
            raise DecodeError(
                f"pgoutput message truncated at byte {self.pos} (need {fmt.size} more)", self.buf
            )
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return values

    def byte(self) -> int:
        return self.unpack(_I8)[0]

    def int16(self) -> int:
        return self.unpack(_I16)[0]

    def int32(self) -> int:
        return self.unpack(_I32)[0]

    def uint32(self) -> int:
        return self.unpack(_U32)[0]

    def uint64(self) -> int:
        return self.unpack(_U64)[0]

    def int64(self) -> int:
        return self.unpack(_I64)[0]

    def char(self) -> str:
        if self.pos >= len(self.buf):
            raise DecodeError(f"pgoutput message truncated at byte {self.pos}", self.buf)
        ch = chr(self.buf[self.pos])
        self.pos += 1
        return ch

    def string(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}", self.buf)
        text = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def raw(self, length: int) -> bytes:
        if length < 0 or self.pos + length > len(self.buf):
            raise DecodeError(f"field of {length} bytes overruns message at {self.pos}", self.buf)
        data = self.buf[self.pos : self.pos + length]
        self.pos += length
        return bytes(data)


def _tuple(r: _Reader) -> tuple[Value, ...]:
    """TupleData: Int16 count, then per column 'n' null, 'u' unchanged TOAST, 't' Int32 + text.

    This is the hot loop of the capture (one call per row image), so it works on local
    variables and raw offsets instead of the reader's checked helpers; a short buffer shows up
    as struct.error or IndexError, which decode_message turns into a DecodeError.
    """
    buf = r.buf
    pos = r.pos
    (count,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack_len = _I32.unpack_from
    size = len(buf)
    for _ in range(count):
        kind = buf[pos]
        pos += 1
        if kind == 116:  # 't'
            (length,) = unpack_len(buf, pos)
            pos += 4
            end = pos + length
            if length < 0 or end > size:
                raise DecodeError(f"value of {length} bytes overruns message at {pos}", buf)
            append(buf[pos:end].decode("utf-8"))
            pos = end
        elif kind == 110:  # 'n'
            append(None)
        elif kind == 117:  # 'u'
            append(UNCHANGED_TOAST)
        elif kind == 98:  # 'b'
            raise DecodeError("binary tuple values were not requested", buf)
        else:
            raise DecodeError(f"unknown tuple value kind {chr(kind)!r} at byte {pos - 1}", buf)
    r.pos = pos
    return tuple(values)


def _old_then_new(r: _Reader) -> tuple[tuple[Value, ...] | None, bool, tuple[Value, ...]]:
    old: tuple[Value, ...] | None = None
    key_only = False
    marker = r.char()
    if marker in ("K", "O"):
        key_only = marker == "K"
        old = _tuple(r)
        marker = r.char()
    if marker != "N":
        raise DecodeError(f"expected 'N' before the new tuple, got {marker!r}", r.buf)
    return old, key_only, _tuple(r)


def decode_message(payload: bytes) -> Message:
    """Decode one pgoutput message (the payload of an XLogData)."""
    if not payload:
        raise DecodeError("empty pgoutput message", payload)
    try:
        return _decode(payload)
    except (struct.error, IndexError):
        raise DecodeError("pgoutput message truncated", payload) from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"pgoutput text is not UTF-8: {exc.reason}", payload) from None


def _decode(payload: bytes) -> Message:
    r = _Reader(payload)
    tag = r.char()
    if tag == "B":
        final_lsn, ts, xid = r.unpack(_BEGIN)
        return Begin(final_lsn, ts, xid)
    if tag == "C":
        flags, commit_lsn, end_lsn, ts = r.unpack(_COMMIT)
        return Commit(flags, commit_lsn, end_lsn, ts)
    if tag in ("I", "U", "D"):
        oid = r.uint32()
        if tag == "I":
            if r.char() != "N":
                raise DecodeError("insert without 'N' tuple", payload)
            return Insert(oid, _tuple(r))
        if tag == "U":
            old, key_only, new = _old_then_new(r)
            return Update(oid, old, key_only, new)
        marker = r.char()
        if marker not in ("K", "O"):
            raise DecodeError(f"delete with unknown tuple marker {marker!r}", payload)
        return Delete(oid, _tuple(r), marker == "K")
    if tag == "R":
        oid = r.uint32()
        namespace = r.string() or "pg_catalog"
        name = r.string()
        identity = r.char()
        columns = []
        for _ in range(r.int16()):
            flags = r.byte()
            col_name = r.string()
            type_oid = r.uint32()
            typmod = r.int32()
            columns.append(Column(bool(flags & 1), col_name, type_oid, typmod))
        return Relation(oid, namespace, name, identity, tuple(columns))
    if tag == "M":
        flags = r.byte()
        lsn = r.uint64()
        prefix = r.string()
        content = r.raw(r.int32())
        return LogicalMessage(bool(flags & 1), lsn, prefix, content)
    if tag == "T":
        count = r.int32()
        options = r.byte()
        return Truncate(options, tuple(r.uint32() for _ in range(count)))
    if tag == "Y":
        oid = r.uint32()
        return TypeInfo(oid, r.string(), r.string())
    if tag == "O":
        lsn = r.uint64()
        return Origin(lsn, r.string())
    raise DecodeError(f"unknown pgoutput message tag {tag!r}", payload)


def decode_copy_data(data: bytes) -> XLogData | Keepalive:
    """Decode one CopyData of START_REPLICATION: XLogData ('w') or primary keepalive ('k')."""
    if not data:
        raise DecodeError("empty CopyData", data)
    tag = data[0:1]
    if tag == b"w":
        if len(data) < 1 + _XLOG.size:
            raise DecodeError("XLogData header truncated", data)
        start, end, ts = _XLOG.unpack_from(data, 1)
        return XLogData(start, end, ts, bytes(data[1 + _XLOG.size :]))
    if tag == b"k":
        if len(data) < 1 + _KEEPALIVE.size:
            raise DecodeError("keepalive truncated", data)
        end, ts, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(end, ts, reply)
    raise DecodeError(f"unknown CopyData tag {tag!r}", data)


_STATUS = struct.Struct("!cQQQqB")


def standby_status(lsn: int, now_us: int, reply_requested: bool = False) -> bytes:
    """'r' Standby status update: written, flushed and applied LSN (all the same for us)."""
    return _STATUS.pack(b"r", lsn, lsn, lsn, now_us, 1 if reply_requested else 0)


def unix_us_to_pg(unix_us: int) -> int:
    return unix_us - _PG_EPOCH_UNIX_US
