"""Reads the SQL and Avro files shipped inside the package."""

from __future__ import annotations

from importlib import resources


def read_text(*parts: str) -> str:
    return resources.files("bookaudit").joinpath(*parts).read_text(encoding="utf-8")
