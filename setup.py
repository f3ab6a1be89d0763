"""Build hook: with BOOKAUDIT_MYPYC=1 the hot paths of the capture and the audit writer are
compiled with mypyc.

Everything else is in pyproject.toml. Without the variable (the default, and what the wheel
test and CI build) the package is pure Python; the compiled modules, when built, replace the
same-named .py at import, and `make compile` builds them in place for a checkout. Each build
records its sources' hashes in src/bookaudit/_compiled.json, which `bookaudit` checks at import
(a compiled module older than its .py would otherwise run silently instead of it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup

# Pure modules whose loops run for every change (README, Benchmarks): the writer's Avro reader
# (about 3.5 times faster compiled) and row preparer (about 1.3 times), and the capture's
# pgoutput decoder, transaction assembler and Avro writer. None of them does I/O.
COMPILED = [
    "src/bookaudit/kafka/_avro_read.py",
    "src/bookaudit/kafka/_avro_fast.py",
    "src/bookaudit/cdc/decode.py",
    "src/bookaudit/cdc/transactions.py",
    "src/bookaudit/consumers/audit/rows.py",
]
MANIFEST = Path("src/bookaudit/_compiled.json")

ext_modules = []
if os.environ.get("BOOKAUDIT_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")
    MANIFEST.write_text(
        json.dumps(
            {
                path.removeprefix("src/"): hashlib.sha256(Path(path).read_bytes()).hexdigest()
                for path in COMPILED
            },
            indent=1,
        )
    )

setup(ext_modules=ext_modules)
