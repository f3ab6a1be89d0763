"""Loads pgoutput messages captured from a real PostgreSQL 15 server (see the JSON's header)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from bookaudit.cdc.decode import Begin, LogicalMessage, Message, decode_message
from bookaudit.cdc.transactions import sign_context
from bookaudit.model import CONTEXT_PREFIX, parse_lsn

DATA = Path(__file__).parent / "data" / "pgoutput_session.json"
# Stands in for a source's bookaudit.context_key in tests that assemble transactions.
TEST_KEY = bytes(range(32))


def captured() -> list[tuple[int, bytes]]:
    doc = json.loads(DATA.read_text())
    return [(parse_lsn(m["lsn"]), bytes.fromhex(m["hex"])) for m in doc["messages"]]


def decoded() -> list[tuple[int, Message]]:
    return [(lsn, decode_message(raw)) for lsn, raw in captured()]


def signed() -> list[tuple[int, Message]]:
    """The captured session with each context message signed by TEST_KEY for its transaction,
    as the installed emit_context signs it (the capture predates signing)."""
    out: list[tuple[int, Message]] = []
    xid = 0
    for lsn, message in decoded():
        if isinstance(message, Begin):
            xid = message.xid
        elif isinstance(message, LogicalMessage) and message.prefix == CONTEXT_PREFIX:
            message = replace(message, content=sign_context(TEST_KEY, xid, message.content))
        out.append((lsn, message))
    return out
