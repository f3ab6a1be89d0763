"""START_REPLICATION is composed with psycopg.sql: names are quoted, never pasted in."""

from __future__ import annotations

from bookaudit.cdc.stream import start_replication


def test_the_command_names_slot_and_publication() -> None:
    assert start_replication("bookaudit", "bookaudit") == (
        b'START_REPLICATION SLOT "bookaudit" LOGICAL 0/0 '
        b"(proto_version '2', publication_names '\"bookaudit\"', messages 'true')"
    )


def test_odd_names_stay_one_identifier() -> None:
    command = start_replication('Slot "x"', "it's")
    assert b'SLOT "Slot ""x""" LOGICAL' in command
    # The publication list is a string literal holding a quoted identifier: both get escaped.
    assert b"publication_names '\"it''s\"'" in command
