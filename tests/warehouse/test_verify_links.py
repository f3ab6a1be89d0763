"""The chain's pure parts: the canonical form, leaves, and what verify says about each link."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bookaudit.chain import (
    CHAINED_COLUMNS,
    GENESIS,
    JSONB_COLUMNS,
    SCALAR_COLUMNS,
    canonical,
    dump_json,
    leaf,
    leaf_of,
    link_hash,
)
from bookaudit.warehouse.verify import LinkRow, check_links

ROW: tuple[Any, ...] = (
    7, "bookings", 2**40, 3, 2**40 - 8, 901, 1_795_000_000_123_000, "public", "bookings",
    "update", {"id": "7"}, {"id": "7", "price": "0.10"}, {"id": "7", "price": "12.50"},
    "alice", "admin", None, "APR-1", None, "app", "app_role", "10.0.0.1", "application",
    "logical", "ba.public.bookings", 2, 41, 1_795_000_000_200_000,
)  # fmt: skip
FIELDS = (("price", 1, "0.10", "12.50"),)


def test_canonical_form_is_the_scalar_columns_then_the_three_jsonb_texts() -> None:
    assert len(ROW) == len(CHAINED_COLUMNS)
    lines = canonical(ROW, FIELDS).decode().split("\n")
    assert lines[0].startswith('["bookaudit.row/2",7,"bookings",1099511627776,3,')
    assert lines[0].endswith(',1795000000200000,[["price",1,"0.10","12.50"]]]')
    assert lines[1:] == ['{"id":"7"}', '{"id":"7","price":"0.10"}', '{"id":"7","price":"12.50"}']
    # jsonb hands keys back in its own order: the form must not depend on it.
    shuffled = (*ROW[:11], {"price": "0.10", "id": "7"}, *ROW[12:])
    assert canonical(shuffled, FIELDS) == canonical(ROW, FIELDS)


def test_the_writers_form_from_stored_texts_equals_verifys_form() -> None:
    scalars = [v for c, v in zip(CHAINED_COLUMNS, ROW, strict=True) if c in SCALAR_COLUMNS]
    texts = [dump_json(ROW[CHAINED_COLUMNS.index(c)]) for c in JSONB_COLUMNS]
    assert leaf_of(scalars, FIELDS, texts) == leaf(ROW, FIELDS)
    odd = {"naïve ✓": 'line\nbreak\ttab \\ "quoted"', "z": None, "a": ""}
    row = (*ROW[:12], odd, *ROW[13:])
    texts = [dump_json(row[CHAINED_COLUMNS.index(c)]) for c in JSONB_COLUMNS]
    assert leaf_of(scalars, FIELDS, texts) == leaf(row, FIELDS)


def test_any_change_of_a_column_or_a_field_changes_the_leaf() -> None:
    original = leaf(ROW, FIELDS)
    for i in range(len(ROW)):
        changed = list(ROW)
        changed[i] = "x" if ROW[i] != "x" else "y"
        assert leaf(changed, FIELDS) != original, CHAINED_COLUMNS[i]
    assert leaf(ROW, (("price", 1, "0.10", "12.51"),)) != original
    assert leaf(ROW, ()) != original


def _links(rows_per_link: list[list[tuple[Any, ...]]]) -> list[LinkRow]:
    out, prev = [], GENESIS
    for position, rows in enumerate(rows_per_link, start=1):
        leaves = [leaf(r, FIELDS) for r in rows]
        hash_ = link_hash(prev, b"".join(leaves))
        out += [
            LinkRow(position, prev, hash_, True, r[0], lf, r, FIELDS)
            for r, lf in zip(rows, leaves, strict=True)
        ]
        prev = hash_
    return out


def _rows(*ids: int) -> list[tuple[Any, ...]]:
    return [(i, *ROW[1:]) for i in ids]


def _problems(links: list[LinkRow]) -> list[str]:
    return [p for _, p in check_links(links) if p is not None]


def test_an_intact_chain_has_no_problems_and_counts_its_rows() -> None:
    links = _links([_rows(1, 2, 3), _rows(5, 4)])
    assert _problems(links) == []
    assert sum(n for n, p in check_links(links) if p is None) == 5


def test_a_modified_and_a_deleted_row_are_named_with_their_link() -> None:
    links = _links([_rows(1, 2), _rows(3), _rows(4, 5)])
    links[1] = replace(links[1], values=(2, "other", *ROW[2:]))
    links[3] = replace(links[3], values=None)
    assert _problems(links) == [
        "audit row 2 (chain position 1) was modified",
        "audit row 4 (chain position 3) was deleted",
    ]


def test_a_missing_link_and_a_relinked_one_are_named() -> None:
    links = _links([_rows(1), _rows(2), _rows(3), _rows(4)])
    assert _problems([links[0], links[2], links[3]]) == [
        "chain positions 2 to 2 are missing",
        "chain position 3 does not link to the entry before it",
    ]
    relinked = replace(links[1], prev_hash=bytes(32))
    assert _problems([links[0], relinked, links[2], links[3]]) == [
        "chain position 2 does not link to the entry before it",
        "chain position 2 was altered: its hash does not cover its rows",
    ]


def test_a_leaf_rewritten_to_match_an_edited_row_breaks_its_link() -> None:
    """An owner who edits a row and also rewrites its stored leaf still breaks the link hash."""
    links = _links([_rows(1, 2), _rows(3)])
    edited_values = (1, "other", *ROW[2:])
    links[0] = replace(links[0], values=edited_values, leaf=leaf(edited_values, FIELDS))
    assert _problems(links) == ["chain position 1 was altered: its hash does not cover its rows"]
