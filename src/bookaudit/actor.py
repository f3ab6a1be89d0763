"""The application's side of attribution: one transaction on a psycopg connection, one named actor."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from bookaudit.errors import BookauditError

SET_ACTOR_SQL = (
    "SELECT bookaudit.set_actor(%(id)s, role => %(role)s, reason => %(reason)s, "
    "approval_ref => %(approval_ref)s, request_id => %(request_id)s)"
)


class ActorError(BookauditError, ValueError):
    """The application asked to act as nobody, or inside a transaction it does not own."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, as the application knows it; only `id` is required."""

    id: str
    role: str | None = None
    reason: str | None = None
    approval_ref: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ActorError(f"actor id must be a non-empty string, got {self.id!r}")

    def params(self) -> dict[str, str | None]:
        return {
            "id": self.id,
            "role": self.role,
            "reason": self.reason,
            "approval_ref": self.approval_ref,
            "request_id": self.request_id,
        }


def set_actor(conn: psycopg.Connection[Any], actor: Actor) -> None:
    """Name the actor for the rest of the transaction already open on `conn`."""
    conn.execute(SET_ACTOR_SQL, actor.params())


@contextmanager
def acting_as(
    conn: psycopg.Connection[Any],
    actor: Actor | str,
    *,
    role: str | None = None,
    reason: str | None = None,
    approval_ref: str | None = None,
    request_id: str | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """One transaction whose every change is attributed to `actor`; commits on success.

    The connection must be idle: inside someone else's transaction this block would only be a
    savepoint, and the actor would stay set after it for changes it does not own.
    """
    if isinstance(actor, str):
        actor = Actor(actor, role, reason, approval_ref, request_id)
    elif any(v is not None for v in (role, reason, approval_ref, request_id)):
        raise ActorError("pass the actor's details in the Actor, or pass a name with keywords")
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ActorError(
            "acting_as opens its own transaction, but the connection is already in one: "
            "commit or roll back first"
        )
    with conn.transaction():
        set_actor(conn, actor)
        yield conn
