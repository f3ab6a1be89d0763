"""Reads the SQL and Avro files shipped inside the package."""

from __future__ import annotations

from importlib import resources


def read_text(*parts: str) -> str:
    return resources.files("bookaudit").joinpath(*parts).read_text(encoding="utf-8")


def list_files(*parts: str, suffix: str) -> list[str]:
    folder = resources.files("bookaudit").joinpath(*parts)
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(suffix))
