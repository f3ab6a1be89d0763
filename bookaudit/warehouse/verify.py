"""Recomputes the warehouse's hash chain and reports every row that was changed, removed or added."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from bookaudit.errors import TerminalError


@dataclass(frozen=True)
class ChainReport:
    entries: int
    head: str | None
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_chain(dsn: str) -> ChainReport:
    try:
        with psycopg.connect(dsn) as conn:
            problems = tuple(
                str(r[0]) for r in conn.execute("SELECT problem FROM audit.verify_chain()")
            )
            head = conn.execute(
                "SELECT position, encode(hash, 'hex') FROM audit.chain "
                "ORDER BY position DESC LIMIT 1"
            ).fetchone()
    except psycopg.errors.UndefinedFunction:
        raise TerminalError(
            "the warehouse has no hash chain: run `bookaudit warehouse init` first"
        ) from None
    except psycopg.OperationalError as exc:
        raise TerminalError(f"cannot connect to the warehouse: {str(exc).strip()}") from None
    if head is None:
        return ChainReport(0, None, problems)
    return ChainReport(int(head[0]), str(head[1]), problems)
