"""The warehouse's source bindings: which database each source name belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bookaudit.warehouse._connect import warehouse


@dataclass(frozen=True)
class Binding:
    name: str
    identity: str
    bound_at: datetime
    entries: int


_LIST = """
SELECT s.name, s.identity, s.bound_at,
       (SELECT count(*) FROM audit.row_changes r WHERE r.source = s.name) AS entries
FROM audit.source_bindings s ORDER BY s.name
"""


def list_bindings(dsn: str) -> list[Binding]:
    with warehouse(dsn) as conn:
        return [Binding(**row) for row in conn.execute(_LIST)]


def release(dsn: str, name: str) -> str | None:
    """Forget which database `name` belongs to, so the next event under it binds it again: for
    a source whose database moved (a restore, a migration). Its entries stay as they are.
    Returns the identity it was bound to, None if it was not bound."""
    with warehouse(dsn) as conn:
        row = conn.execute(
            "DELETE FROM audit.source_bindings WHERE name = %s RETURNING identity", (name,)
        ).fetchone()
    return None if row is None else str(row["identity"])
