"""Recomputes the warehouse's hash chain and reports every row that was changed, removed or added."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import tuple_row

from bookaudit.chain import CHAINED_COLUMNS, GENESIS, FieldRow, leaf, link_hash
from bookaudit.warehouse._connect import warehouse


@dataclass(frozen=True)
class ChainReport:
    entries: int
    head: str | None
    problems: tuple[str, ...]
    # Rows chained by an earlier release's per-row chain (audit.chain_v1), not recomputed here.
    legacy: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class LinkRow:
    """One row as a link lists it: the link, the row's place in it, and the row as stored
    (None when no audit row has that id any more)."""

    position: int
    prev_hash: bytes
    hash: bytes
    leaves_fit: bool
    change_id: int
    leaf: bytes
    values: tuple[Any, ...] | None
    fields: tuple[FieldRow, ...]


def check_links(rows: Iterable[LinkRow]) -> Iterator[tuple[int, str | None]]:
    """Pure: each link's problems in chain order, from its rows in link order. Yields
    (rows in the link, problem) with problem None after a link that holds."""
    prev, expected = GENESIS, 1
    for position, group in itertools.groupby(rows, key=lambda r: r.position):
        members = list(group)
        first = members[0]
        if position != expected:
            yield 0, f"chain positions {expected} to {position - 1} are missing"
        if first.prev_hash != prev:
            yield 0, f"chain position {position} does not link to the entry before it"
        leaves = b"".join(m.leaf for m in members)
        if not first.leaves_fit or link_hash(first.prev_hash, leaves) != first.hash:
            yield 0, f"chain position {position} was altered: its hash does not cover its rows"
        for m in members:
            if m.values is None:
                yield 0, f"audit row {m.change_id} (chain position {position}) was deleted"
            elif leaf(m.values, m.fields) != m.leaf:
                yield 0, f"audit row {m.change_id} (chain position {position}) was modified"
        yield len(members), None
        prev, expected = first.hash, position + 1


def _stored(name: str) -> str:
    """A CHAINED_COLUMNS column as the chain hashes it: positions as integers, timestamps as
    epoch microseconds (their text would follow the session's TimeZone)."""
    if name in ("commit_lsn", "lsn"):
        return f"(r.{name} - '0/0'::pg_lsn)::numeric"
    if name in ("committed_at", "recorded_at"):
        return f"(extract(epoch FROM r.{name}) * 1000000)::bigint"
    return f"r.{name}"


_LINK_ROWS = f"""
SELECT l.position, l.prev_hash, l.hash,
       octet_length(l.leaves) = 32 * cardinality(l.change_ids),
       u.change_id, substring(l.leaves FROM (u.n - 1)::int * 32 + 1 FOR 32),
       r.id IS NOT NULL, {", ".join(_stored(c) for c in CHAINED_COLUMNS)},
       (SELECT json_agg(json_build_array(f.field, f.position, f.old_value, f.new_value)
                        ORDER BY f.position)
        FROM audit.field_changes f WHERE f.change_id = u.change_id)
FROM audit.chain_links l
CROSS JOIN LATERAL unnest(l.change_ids) WITH ORDINALITY AS u(change_id, n)
LEFT JOIN audit.row_changes r ON r.id = u.change_id
ORDER BY l.position, u.n
"""

# Rows no link covers (EXCEPT hashes both sides: one pass, whatever the number of links).
_ORPHANS = """
SELECT id FROM audit.row_changes
EXCEPT SELECT unnest(change_ids) FROM audit.chain_links
ORDER BY 1
"""
_ORPHANS_BESIDE_V1 = """
SELECT id FROM audit.row_changes
EXCEPT (SELECT unnest(change_ids) FROM audit.chain_links
        UNION ALL SELECT change_id FROM audit.chain_v1)
ORDER BY 1
"""

# Field rows of no chained row (field_changes holds no foreign key: 001_audit.sql).
_ORPHAN_FIELDS = """
SELECT change_id FROM audit.field_changes
EXCEPT SELECT unnest(change_ids) FROM audit.chain_links
ORDER BY 1
"""
_ORPHAN_FIELDS_BESIDE_V1 = """
SELECT change_id FROM audit.field_changes
EXCEPT (SELECT unnest(change_ids) FROM audit.chain_links
        UNION ALL SELECT change_id FROM audit.chain_v1)
ORDER BY 1
"""

_INTEGERS = {CHAINED_COLUMNS.index(c) for c in ("commit_lsn", "lsn")}


def _link_row(raw: Sequence[Any]) -> LinkRow:
    position, prev_hash, hash_, fit, change_id, leaf_, present = raw[:7]
    values = tuple(
        int(v) if i in _INTEGERS and v is not None else v
        for i, v in enumerate(raw[7 : 7 + len(CHAINED_COLUMNS)])
    )
    fields = tuple((f[0], f[1], f[2], f[3]) for f in raw[-1] or ())
    return LinkRow(
        position, bytes(prev_hash), bytes(hash_), bool(fit), change_id, bytes(leaf_),
        values if present else None, fields,
    )  # fmt: skip


def verify_chain(dsn: str, progress: Callable[[int], None] | None = None) -> ChainReport:
    """Walk every link in order over one snapshot; `progress` hears the rows checked so far."""
    problems: list[str] = []
    entries, head = 0, None
    with warehouse(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        with conn.cursor(name="bookaudit_verify", row_factory=tuple_row) as cur:
            cur.itersize = 2000
            cur.execute(_LINK_ROWS)
            for count, problem in check_links(_link_row(r) for r in cur):
                if problem is not None:
                    problems.append(problem)
                    continue
                entries += count
                if progress is not None:
                    progress(entries)
        last = conn.execute(
            "SELECT encode(hash, 'hex') AS hash FROM audit.chain_links "
            "ORDER BY position DESC LIMIT 1"
        ).fetchone()
        head = None if last is None else str(last["hash"])
        legacy = conn.execute("SELECT to_regclass('audit.chain_v1') IS NOT NULL AS found")
        has_legacy = bool(legacy.fetchone()["found"])  # type: ignore[index]
        legacy_rows = 0
        if has_legacy:
            row = conn.execute("SELECT count(*) AS n FROM audit.chain_v1").fetchone()
            legacy_rows = int(row["n"]) if row else 0
        for orphan in conn.execute(_ORPHANS_BESIDE_V1 if has_legacy else _ORPHANS):
            problems.append(
                f"audit row {orphan['id']} is not in the chain: "
                "it was written around the audit writer"
            )
        for orphan in conn.execute(_ORPHAN_FIELDS_BESIDE_V1 if has_legacy else _ORPHAN_FIELDS):
            problems.append(
                f"field rows of change {orphan['change_id']} belong to no chained audit row: "
                "they were written around the audit writer"
            )
    return ChainReport(entries, head, tuple(problems), legacy_rows)


def verify_alert_chain(dsn: str) -> ChainReport:
    """The alerts' own chain (sql/warehouse/011_alert_chain.sql): a deleted, edited or
    slipped-in alert is reported like an audit row."""
    with warehouse(dsn) as conn:
        problems = tuple(
            str(r["problem"])
            for r in conn.execute("SELECT problem FROM audit.verify_alert_chain()")
        )
        head = conn.execute(
            "SELECT position, encode(hash, 'hex') AS hash FROM audit.alert_chain "
            "ORDER BY position DESC LIMIT 1"
        ).fetchone()
    if head is None:
        return ChainReport(0, None, problems)
    return ChainReport(int(head["position"]), str(head["hash"]), problems)
