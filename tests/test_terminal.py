"""Terminal-safe text: nothing a terminal would act on or hide gets through."""

from __future__ import annotations

import pytest

from bookaudit.terminal import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("alice", "alice"),
        ("Zoë Ørsted 山田", "Zoë Ørsted 山田"),
        ("eve\n2026-11-26 09:00  alice  admin", "eve\\n2026-11-26 09:00  alice  admin"),
        ("\x1b[2J\x1b[31mroot\x1b[0m", "\\x1b[2J\\x1b[31mroot\\x1b[0m"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("a\rb\tc\x00d\x7f", "a\\rb\\tc\\x00d\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # the C1 form of CSI
        ("admin\u202egnp.exe", "admin\\u202egnp.exe"),  # right-to-left override
        ("al\u200bice", "al\\u200bice"),  # zero-width space
        ("C:\\temp\\n", "C:\\\\temp\\\\n"),  # a literal backslash-n stays distinguishable
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert "\x1b" not in printable(raw) and "\n" not in printable(raw)


def test_every_non_printable_code_point_is_escaped() -> None:
    for code in [*range(0x00, 0x20), *range(0x7F, 0xA1), 0x2028, 0x2029, 0x2066, 0xFEFF]:
        shown = printable(chr(code))
        assert shown.isprintable() and shown.startswith("\\"), hex(code)
