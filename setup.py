"""Build hook: with BOOKAUDIT_MYPYC=1 the audit writer's Avro reader is compiled with mypyc.

Everything else is in pyproject.toml. Without the variable (the default, and what the wheel
test and CI build) the package is pure Python; the compiled module, when built, replaces the
same-named .py at import, and `make compile` builds it in place for a checkout.
"""

from __future__ import annotations

import os

from setuptools import setup

# The one module whose loops run for every column of every change the writer reads; mypyc
# makes it about 3.5 times faster (README, Benchmarks). It has no dependencies but the stdlib.
COMPILED = ["src/bookaudit/kafka/_avro_read.py"]

ext_modules = []
if os.environ.get("BOOKAUDIT_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)
