"""Makes text from the audit (actors, roles, reasons, values) safe to print on a terminal."""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """Every character a terminal would act on or hide, escaped the way Python writes it.

    The application names its actors and writes reasons and values, so none of them may reach a
    terminal raw: a newline would print a fake history line, ESC starts an ANSI sequence that can
    recolour, move the cursor or retitle the window, and bidi controls or zero-width characters
    make one name look like another. Backslashes are doubled so an escape is never ambiguous.
    Only table output uses this; JSON and CSV keep values exact.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(c) for c in text)
