"""Loads pgoutput messages captured from a real PostgreSQL 15 server (see the JSON's header)."""

from __future__ import annotations

import json
from pathlib import Path

from bookaudit.cdc.decode import Message, decode_message
from bookaudit.model import parse_lsn

DATA = Path(__file__).parent / "data" / "pgoutput_session.json"


def captured() -> list[tuple[int, bytes]]:
    doc = json.loads(DATA.read_text())
    return [(parse_lsn(m["lsn"]), bytes.fromhex(m["hex"])) for m in doc["messages"]]


def decoded() -> list[tuple[int, Message]]:
    return [(lsn, decode_message(raw)) for lsn, raw in captured()]
