"""The shared model: positions keep their int value to the edge, the actor is labelled once."""

from __future__ import annotations

import pytest

from bookaudit.errors import DecodeError
from bookaudit.model import (
    NO_CONTEXT,
    ActorContext,
    CommitSeq,
    Lsn,
    format_lsn,
    format_position,
    parse_lsn,
    parse_position,
)


def test_lsn_text_round_trip() -> None:
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    with pytest.raises(DecodeError):
        parse_lsn("nonsense")


def test_both_kinds_of_position_round_trip_through_pg_lsn_text() -> None:
    assert format_position(Lsn(0x16_B374D848)) == "16/B374D848"
    # A commit number is stored as pg_lsn too, so one warehouse column orders both modes.
    assert format_position(CommitSeq(42)) == "0/2A"
    assert parse_position("0/2A") == 42


def test_label_is_the_application_user_when_set() -> None:
    actor = ActorContext(origin="application", id="alice", db_user="app", application="web")
    assert actor.display == "alice"
    assert actor.identity == "alice"


def test_label_falls_back_to_the_db_role_and_program() -> None:
    actor = ActorContext(origin="session", db_user="app", application="psql")
    assert actor.display == "app (db role via psql)"
    assert ActorContext(origin="session", db_user="app").display == "app (db role)"
    assert NO_CONTEXT.display == "unknown (db role)"


def test_identity_is_not_the_label() -> None:
    """Two programs under one role are one person to the rules, as in `history actor`."""
    web = ActorContext(origin="session", db_user="app", application="web")
    cron = ActorContext(origin="session", db_user="app", application="cron")
    assert web.display != cron.display
    assert web.identity == cron.identity == "app"


def test_actor_dict_round_trip() -> None:
    actor = ActorContext(
        origin="application",
        id="alice",
        role="dispatcher",
        reason="r",
        approval_ref="A-1",
        request_id="q",
        application="web",
        db_user="app",
        client_addr="10.0.0.1",
    )
    assert ActorContext.from_dict(actor.to_dict()) == actor
