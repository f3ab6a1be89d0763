"""A module loaded from its .py whatever the import gives: the reference that a mypyc build
(`make compile`, setup.py's COMPILED) is compared with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def python_source(module: ModuleType) -> ModuleType:
    """`module` loaded again from its .py under another name (without a build, the import is
    that same source)."""
    name = module.__name__.rpartition(".")[2]
    path = Path(module.__file__ or "").with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_source", path)
    assert spec is not None and spec.loader is not None
    source = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the class is made
    sys.modules[spec.name] = source
    spec.loader.exec_module(source)
    return source
