"""bookaudit: booking history and audit log built as a Postgres → Kafka → warehouse CDC pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__version__ = "0.1.0"


def check_compiled(manifest: Path, root: Path) -> None:
    """Refuse to run a mypyc build older than its source (`make compile`, setup.py): Python
    imports a compiled module in preference to the .py beside it, edited or not. `manifest`
    maps each compiled source, relative to `root`, to its sha256 at build time."""
    if not manifest.exists():
        return
    for path, digest in json.loads(manifest.read_text()).items():
        source = root / path
        if source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != digest:
            raise ImportError(
                f"bookaudit: the compiled build of {path} is older than the file: "
                "run `make compile` again, or `make clean-compiled` to run the .py"
            )


check_compiled(Path(__file__).with_name("_compiled.json"), Path(__file__).parent.parent)
