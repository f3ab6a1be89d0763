"""The guard against a mypyc build older than its source (setup.py writes the manifest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bookaudit import check_compiled


def _build(root: Path, text: bytes) -> Path:
    source = root / "bookaudit" / "cdc" / "decode.py"
    source.parent.mkdir(parents=True)
    source.write_bytes(text)
    manifest = root / "bookaudit" / "_compiled.json"
    manifest.write_text(json.dumps({"bookaudit/cdc/decode.py": hashlib.sha256(text).hexdigest()}))
    return manifest


def test_a_build_of_the_current_source_is_accepted(tmp_path: Path) -> None:
    manifest = _build(tmp_path, b"X = 1\n")
    check_compiled(manifest, tmp_path)  # raises if refused


def test_a_source_edited_after_the_build_is_refused_naming_it(tmp_path: Path) -> None:
    manifest = _build(tmp_path, b"X = 1\n")
    (tmp_path / "bookaudit" / "cdc" / "decode.py").write_bytes(b"X = 2\n")
    with pytest.raises(ImportError, match=r"bookaudit/cdc/decode\.py .*make compile"):
        check_compiled(manifest, tmp_path)


def test_no_manifest_means_no_compiled_build(tmp_path: Path) -> None:
    check_compiled(tmp_path / "_compiled.json", tmp_path)  # the pure-Python install
