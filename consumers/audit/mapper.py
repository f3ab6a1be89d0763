"""Pure mapping of a decoded envelope to an audit entry: one row change plus its changed fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bookaudit.cdc.decode import format_lsn
from bookaudit.consumers.decode import Decoded

# op r is a row as it existed when the audit started (the install's baseline), not an insert.
ACTIONS = {"c": "insert", "r": "existing", "u": "update", "d": "delete", "t": "truncate"}


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of audit.row_changes with its audit.field_changes rows."""

    source: str
    commit_lsn: str
    sequence: int
    lsn: str
    txid: int
    committed_at_ms: int
    schema_name: str
    table_name: str
    action: str
    row_key: dict[str, str | None] | None
    before: dict[str, str | None] | None
    after: dict[str, str | None] | None
    actor: dict[str, str | None]
    capture_mode: str
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    fields: tuple[FieldChange, ...]


def changed_fields(
    before: Mapping[str, str | None] | None,
    after: Mapping[str, str | None] | None,
    order: Sequence[str],
) -> tuple[FieldChange, ...]:
    """Insert (and baseline): every non-null new value. Delete: every non-null old value.
    Update: what differs."""
    if before is None and after is None:
        return ()
    if before is None:
        assert after is not None
        return tuple(FieldChange(c, None, after[c]) for c in order if after.get(c) is not None)
    if after is None:
        return tuple(FieldChange(c, before[c], None) for c in order if before.get(c) is not None)
    return tuple(
        FieldChange(c, before.get(c), after.get(c)) for c in order if before.get(c) != after.get(c)
    )


def to_audit_entry(decoded: Decoded) -> AuditEntry:
    env = decoded.envelope
    src = env["source"]
    before = env.get("before")
    after = env.get("after")
    columns: list[dict[str, Any]] = env.get("columns") or []
    order = [c["name"] for c in columns] or list((after or before or {}).keys())
    key = decoded.key
    row_key = None if key is None else {c["name"]: c["value"] for c in key["columns"]}
    record = decoded.record
    return AuditEntry(
        source=src["name"],
        commit_lsn=format_lsn(src["commit_lsn"]),
        sequence=src["sequence"],
        lsn=format_lsn(src["lsn"]),
        txid=src["txId"],
        committed_at_ms=src["ts_ms"],
        schema_name=src["schema"],
        table_name=src["table"],
        action=ACTIONS[env["op"]],
        row_key=row_key,
        before=before,
        after=after,
        actor=dict(env["actor"]),
        capture_mode=src.get("mode", "logical"),
        kafka_topic=record.topic,
        kafka_partition=record.partition,
        kafka_offset=record.offset,
        fields=changed_fields(before, after, order),
    )
