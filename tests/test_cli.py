"""CLI errors without services: one line, naming the setting or value at fault, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bookaudit.cli import main

# None removes the variable for the invocation, so the developer's own BOOKAUDIT_* stay out.
CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "BOOKAUDIT_SOURCE_DSN",
        "BOOKAUDIT_WAREHOUSE_DSN",
        "BOOKAUDIT_KAFKA_BOOTSTRAP",
        "BOOKAUDIT_SLOT",
        "BOOKAUDIT_BATCH_SIZE",
        "BOOKAUDIT_CONFIG",
    )
}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["capture"], {}, "source_dsn is not set: pass --source-dsn or set BOOKAUDIT_SOURCE_DSN"),
        (
            ["consume", "audit", "--warehouse-dsn", "postgresql://x/y"],
            {},
            "kafka_bootstrap is not set: pass --kafka-bootstrap or set BOOKAUDIT_KAFKA_BOOTSTRAP",
        ),
        (
            ["capture", "--slot", "Bad Slot"],
            {},
            "--slot: slot 'Bad Slot' must be a lower-case identifier",
        ),
        (
            ["consume", "audit"],
            {"BOOKAUDIT_BATCH_SIZE": "lots"},
            "BOOKAUDIT_BATCH_SIZE: batch_size must be an integer, got 'lots'",
        ),
        (
            ["source", "install", "--dsn", "postgresql://127.0.0.1:1/nowhere", "--table", "b"],
            {},
            "cannot connect to the source database",
        ),
        (
            ["capture", "--kafka-bootstrap", "k:9092"],
            {"BOOKAUDIT_SOURCE_DSN": "host=x password=secret leaked"},
            "BOOKAUDIT_SOURCE_DSN: source_dsn is not a valid connection string",
        ),
        (
            ["source", "install", "--dsn", "host=x password=secret leaked", "--table", "b"],
            {},
            "the value is not shown because it may hold a password",
        ),
        (
            ["source", "install", "--dsn", "host=x", "--table", 'public."open'],
            {},
            "an unterminated or misplaced double quote",
        ),
    ],
)
def test_errors_are_one_line_naming_the_culprit(
    args: list[str],
    env: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./bookaudit.toml
    result = CliRunner().invoke(main, args, env={**CLEAN_ENV, **env})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bookaudit: error: ")
    assert message in lines[0]
    assert "leaked" not in result.output and "secret" not in result.output


def test_config_file_from_the_root_option(tmp_path: Path) -> None:
    toml = tmp_path / "custom.toml"
    toml.write_text('[bookaudit]\nslot = "Nope!"\n')
    result = CliRunner().invoke(main, ["--config", str(toml), "capture"], env=CLEAN_ENV)
    assert result.exit_code == 2
    assert "slot 'Nope!' must be a lower-case identifier" in result.stderr
