"""Keeps two source databases given one source name from being mixed in the warehouse."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg

from bookaudit.classify import pg_connect_error
from bookaudit.consumers.records import DeadLetter, Record
from bookaudit.errors import TerminalError, TransientError
from bookaudit.kafka.serde import SOURCE_HEADER, SOURCE_ID_HEADER

_BIND = """
INSERT INTO audit.source_bindings (name, identity)
SELECT * FROM unnest(%s::text[], %s::text[])
ON CONFLICT (name) DO NOTHING
"""
_BOUND = "SELECT name, identity FROM audit.source_bindings WHERE name = ANY(%s)"


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def source_of(record: Record) -> tuple[str, str] | None:
    """(source name, source identity) from the record's headers; None from a capture too old
    to send them."""
    name = identity = None
    for key, value in record.headers:
        if key == SOURCE_HEADER:
            name = _text(value)
        elif key == SOURCE_ID_HEADER:
            identity = _text(value)
    if name is None or identity is None:
        return None
    return name, identity


def sources_of(records: Iterable[Record]) -> list[tuple[str, str] | None]:
    """Pure: source_of for each record, in one pass over their headers."""
    return [source_of(record) for record in records]


def unbound(found: Iterable[tuple[str, str] | None], bound: Mapping[str, str]) -> dict[str, str]:
    """Pure: the source names of `found` (sources_of a batch) that have no binding yet, each
    with the identity of the first record naming it."""
    claims: dict[str, str] = {}
    for pair in found:
        if pair is not None and pair[0] not in bound:
            claims.setdefault(*pair)
    return claims


def sort_out(
    records: Sequence[Record], found: Sequence[tuple[str, str] | None], bound: Mapping[str, str]
) -> tuple[list[Record], list[DeadLetter]]:
    """Pure: the records whose source (`found`, sources_of them) is bound to their own database
    (or that name no source), and dead letters for the rest, each naming both databases and the
    way out."""
    admitted: list[Record] = []
    refused: list[DeadLetter] = []
    for record, pair in zip(records, found, strict=True):
        if pair is None or bound.get(pair[0]) == pair[1]:
            admitted.append(record)
            continue
        name, identity = pair
        refused.append(
            DeadLetter(
                record,
                f"{record.topic}[{record.partition}]@{record.offset}: source {name!r} belongs "
                f"to database {bound.get(name)!r} in this warehouse, but this event comes from "
                f"{identity!r}: give each capture its own --source-name, or run `bookaudit "
                f"warehouse sources --release {name}` if this database took the source over",
            )
        )
    return admitted, refused


class SourceGuard:
    """Binds each new source name to the first database seen under it, in the warehouse, and
    sets aside events of any other database under that name."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.bound: dict[str, str] = {}

    def admit(self, records: Sequence[Record]) -> tuple[list[Record], list[DeadLetter]]:
        found = sources_of(records)
        claims = unbound(found, self.bound)
        if claims:
            self.bound.update(self._bind(claims))
        return sort_out(records, found, self.bound)

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self._dsn, autocommit=True, application_name="bookaudit-audit-writer-sources"
                )
            except psycopg.OperationalError as exc:
                raise pg_connect_error("cannot connect to the warehouse", exc, self._dsn) from None
        return self._conn

    def _bind(self, claims: Mapping[str, str]) -> dict[str, str]:
        conn = self._connection()
        names = list(claims)
        try:
            conn.execute(_BIND, (names, [claims[n] for n in names]))
            return {str(n): str(i) for n, i in conn.execute(_BOUND, (names,))}
        except psycopg.errors.UndefinedTable:
            raise TerminalError(
                "the warehouse has no audit.source_bindings table (an older audit schema): "
                "run `bookaudit warehouse init` to upgrade it"
            ) from None
        except psycopg.OperationalError as exc:
            conn.close()
            raise TransientError(f"cannot bind source names: {str(exc).strip()}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
