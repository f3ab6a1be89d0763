"""A lost replication slot is a named gap, never a silent one: what the capture confirmed is kept
outside the slot (bookaudit.capture_state), a missing or invalidated slot stops the capture with
what was lost, and `--accept-gap` records the gap (bookaudit.capture_gaps) before going on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from bookaudit.errors import SourceCheckError, TerminalError
from bookaudit.model import format_lsn, parse_lsn

Conn = psycopg.Connection[tuple[Any, ...]]


class SlotLostError(TerminalError):
    """The slot the audit streams from is gone or invalidated: changes since the last confirmed
    position are not in the audit, and only the user can decide to go on without them."""


@dataclass(frozen=True)
class Confirmed:
    """The last position up to which every change was in Kafka, and when the capture said so."""

    lsn: int
    at: datetime


@dataclass(frozen=True)
class SlotCondition:
    """What the server says about the slot: absent, present, or present but invalidated."""

    exists: bool
    wal_status: str | None = None

    @property
    def lost(self) -> str | None:
        """Why the slot can no longer serve the audit, or None when it can."""
        if not self.exists:
            return "does not exist (dropped, or lost in a failover)"
        if self.wal_status == "lost":
            return (
                "was invalidated: the server removed WAL it still needed (max_slot_wal_keep_size)"
            )
        return None


def lost_slot_message(slot: str, why: str, confirmed: Confirmed | None, now_lsn: int) -> str:
    """One line: which slot, what was lost, what to do."""
    if confirmed is None:
        lost = "no position was ever confirmed, so every change since install may be missing"
    else:
        lost = (
            f"changes committed after {format_lsn(confirmed.lsn)} (confirmed "
            f"{confirmed.at.isoformat(sep=' ', timespec='seconds')}) up to now "
            f"({format_lsn(now_lsn)}) are not in the audit"
        )
    return (
        f"replication slot {slot!r} {why}; {lost}. Run `bookaudit capture --accept-gap` to "
        "create a new slot from now and record the gap in the audit, or `bookaudit source "
        "install` again for a fresh baseline"
    )


def slot_condition(conn: Conn, slot: str) -> SlotCondition:
    row = conn.execute(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    return SlotCondition(False) if row is None else SlotCondition(True, row[0])


def read_confirmed(conn: Conn, slot: str) -> Confirmed | None:
    try:
        row = conn.execute(
            "SELECT confirmed_lsn::text, confirmed_at FROM bookaudit.capture_state WHERE slot = %s",
            (slot,),
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        raise SourceCheckError(
            "bookaudit.capture_state is missing: run `bookaudit source install` again "
            "(it adds what this version needs and keeps what is there)"
        ) from None
    return None if row is None else Confirmed(parse_lsn(str(row[0])), row[1])


def record_confirmed(conn: Conn, slot: str, lsn: int) -> None:
    conn.execute(
        "INSERT INTO bookaudit.capture_state AS s (slot, confirmed_lsn, confirmed_at) "
        "VALUES (%s, %s::pg_lsn, now()) ON CONFLICT (slot) DO UPDATE "
        "SET confirmed_lsn = excluded.confirmed_lsn, confirmed_at = excluded.confirmed_at "
        "WHERE s.confirmed_lsn < excluded.confirmed_lsn",
        (slot, format_lsn(lsn)),
    )


def create_slot(conn: Conn, slot: str) -> int:
    """A new pgoutput slot; returns the position its stream starts from."""
    try:
        row = conn.execute(
            "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceCheckError(
            f"cannot create slot {slot!r}: {exc.diag.message_primary} "
            "(the capture role needs REPLICATION)"
        ) from None
    assert row is not None
    return parse_lsn(str(row[0]))


def accept_gap(conn: Conn, slot: str, why: str, confirmed: Confirmed | None) -> str:
    """Replace the slot and record the gap; the gap row is committed after the new slot exists,
    so it is the first thing the new slot streams. Returns the line to log."""
    if slot_condition(conn, slot).exists:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    resumed = create_slot(conn, slot)
    conn.execute(
        "INSERT INTO bookaudit.capture_gaps "
        "(slot, reason, last_confirmed_lsn, last_confirmed_at, resumed_lsn) "
        "VALUES (%s, %s, %s::pg_lsn, %s, %s::pg_lsn)",
        (
            slot,
            f"slot {why}",
            None if confirmed is None else format_lsn(confirmed.lsn),
            None if confirmed is None else confirmed.at,
            format_lsn(resumed),
        ),
    )
    since = "install" if confirmed is None else format_lsn(confirmed.lsn)
    return (
        f"capture: gap accepted: slot {slot!r} recreated at {format_lsn(resumed)}; changes "
        f"between {since} and {format_lsn(resumed)} are missing, and the audit says so"
    )
