"""Recomputes the warehouse's hash chains (audit rows, alerts) and reports every row that was
changed, removed or added."""

from __future__ import annotations

from dataclasses import dataclass

from bookaudit.warehouse._connect import warehouse


@dataclass(frozen=True)
class ChainReport:
    entries: int
    head: str | None
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_chain(dsn: str) -> ChainReport:
    with warehouse(dsn) as conn:
        problems = tuple(
            str(r["problem"]) for r in conn.execute("SELECT problem FROM audit.verify_chain()")
        )
        head = conn.execute(
            "SELECT position, encode(hash, 'hex') AS hash FROM audit.chain "
            "ORDER BY position DESC LIMIT 1"
        ).fetchone()
    if head is None:
        return ChainReport(0, None, problems)
    return ChainReport(int(head["position"]), str(head["hash"]), problems)


def verify_alert_chain(dsn: str) -> ChainReport:
    """The alerts' own chain: a deleted, edited or slipped-in alert is reported like a row."""
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
