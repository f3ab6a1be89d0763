"""Imports run with the data: source install → cdc → Kafka → consumers → warehouse → read side →
cli. Checked on the parsed source of every module, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "bookaudit"

# The shared model every stage may import: errors, config, the model itself and the wire between
# the stages (the Kafka serdes and producer). It imports no stage.
MODEL = "model"
# The stages in the order the data flows; a prefix names every module under it, and the longest
# matching prefix decides.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        MODEL,
        (
            "bookaudit",
            "bookaudit.__version__",
            "bookaudit._resources",
            "bookaudit.errors",
            "bookaudit.classify",
            "bookaudit.config",
            "bookaudit.entity_map",
            "bookaudit.model",
            "bookaudit.chain",
            "bookaudit.kafka",
            "bookaudit.terminal",
            "bookaudit.runtime",
        ),
    ),
    ("source install", ("bookaudit.source", "bookaudit.actor")),
    ("cdc", ("bookaudit.cdc",)),
    ("consumers", ("bookaudit.consumers",)),
    ("warehouse", ("bookaudit.warehouse.schema", "bookaudit.warehouse.mapping")),
    ("read side", ("bookaudit.warehouse", "bookaudit.web")),
    ("commands", ("bookaudit._commands",)),
    ("demo", ("bookaudit.demo",)),
    ("cli", ("bookaudit.cli", "bookaudit.__main__")),
)
# Only these compose stages; every other stage sees the model and itself, nothing else.
COMPOSERS = {"commands", "demo", "cli"}
# Inside a stage, parts that are alternatives to each other: neither may lean on the other, or a
# change to one silently changes the other.
INDEPENDENT = (
    ("bookaudit.cdc.capture", "bookaudit.cdc.relay"),
    ("bookaudit.consumers.audit", "bookaudit.consumers.alerts"),
)
ORDER = {name: rank for rank, (name, _) in enumerate(STAGES)}


def stage_of(module: str) -> str:
    best, length = "", -1
    for name, prefixes in STAGES:
        for prefix in prefixes:
            # The package itself names only its __init__: a new module must pick its stage.
            below = prefix != "bookaudit" and module.startswith(prefix + ".")
            if (module == prefix or below) and len(prefix) > length:
                best, length = name, len(prefix)
    if not best:
        raise AssertionError(f"{module} belongs to no stage: add it to STAGES")
    return best


def modules() -> Iterator[tuple[str, Path]]:
    # src/bookaudit links to the top-level cdc/, consumers/, ...; rglob does not follow links.
    roots = [PACKAGE, *(p for p in PACKAGE.iterdir() if p.is_symlink() and p.is_dir())]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if root != PACKAGE:
                parts.insert(0, root.name)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(["bookaudit", *parts]), path


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from bookaudit.x import y` may name a module y: judge the most specific one.
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def violation(importer: str, imported: str) -> str | None:
    if not imported.startswith("bookaudit"):
        return None
    src, dst = stage_of(importer), stage_of(imported)
    for a, b in INDEPENDENT:
        for one, other in ((a, b), (b, a)):
            if importer.startswith(one) and (imported == other or imported.startswith(other + ".")):
                return f"{one} and {other} are alternatives and must not import each other"
    if ORDER[dst] > ORDER[src]:
        return f"{src} imports {dst}, which comes later in the flow"
    if dst not in (src, MODEL) and src not in COMPOSERS:
        return f"{src} imports another stage ({dst}); share it through bookaudit.model instead"
    return None


def all_violations() -> list[str]:
    found = []
    for module, path in modules():
        for line, imported in imports(path, module):
            why = violation(module, imported)
            if why:
                found.append(f"{path.relative_to(PACKAGE.parent.parent)}:{line}: {why}")
    return found


def test_every_import_runs_with_the_flow() -> None:
    assert all_violations() == []


def test_every_module_is_seen() -> None:
    seen = {m for m, _ in modules()}
    # One module per stage, so a broken walk (links not followed) cannot pass quietly.
    for expected in (
        "bookaudit.model",
        "bookaudit.source.install",
        "bookaudit.cdc.capture",
        "bookaudit.kafka.serde",
        "bookaudit.consumers.records",
        "bookaudit.consumers.alerts.job",
        "bookaudit.warehouse.schema",
        "bookaudit.warehouse.history",
        "bookaudit.demo.cli",
        "bookaudit.cli",
    ):
        assert expected in seen


@pytest.mark.parametrize(
    ("importer", "imported", "complaint"),
    [
        ("bookaudit.cdc.relay", "bookaudit.cdc.capture.CaptureStats", "alternatives"),
        ("bookaudit.cdc.relay", "bookaudit.source.install.OUTBOX_TRIGGER", "another stage"),
        ("bookaudit.consumers.alerts.job", "bookaudit.consumers.audit.job", "alternatives"),
        ("bookaudit.consumers.records", "bookaudit.cdc.decode.format_lsn", "another stage"),
        ("bookaudit.warehouse.alerts", "bookaudit.consumers.alerts.model", "another stage"),
        ("bookaudit.demo.cli", "bookaudit.cli._config", "later in the flow"),
        ("bookaudit.model", "bookaudit.cdc.decode", "later in the flow"),
        ("bookaudit.cdc.capture", "bookaudit.consumers.records", "later in the flow"),
    ],
)
def test_the_violations_the_layout_had_are_refused(
    importer: str, imported: str, complaint: str
) -> None:
    why = violation(importer, imported)
    assert why is not None and complaint in why


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("bookaudit.cdc.relay", "bookaudit.model.OUTBOX_TRIGGER"),
        ("bookaudit.consumers.alerts.job", "bookaudit.consumers.records.decode_and_map"),
        ("bookaudit.consumers.alerts.sink", "bookaudit.kafka.producer.KafkaSink"),
        ("bookaudit.cli", "bookaudit.demo.cli.demo"),
        ("bookaudit.demo.cli", "bookaudit.warehouse.history.render_table"),
    ],
)
def test_imports_along_the_flow_are_allowed(importer: str, imported: str) -> None:
    assert violation(importer, imported) is None


def test_no_test_module_imports_another() -> None:
    """Shared test helpers live in helper modules (harness, fixtures, workloads) or conftest
    fixtures: importing a test module runs its module code in another and hides the dependency."""
    tests_root = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests_root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_"):
                    found.append(f"{path.relative_to(tests_root)}:{node.lineno}: {name}")
    assert found == []
