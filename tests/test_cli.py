"""CLI errors without services: one line, naming the setting or value at fault, exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bookaudit.cli import _Setting, main
from bookaudit.config import Config

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


def _options(group: click.Group, path: str = "bookaudit") -> Iterator[tuple[str, click.Option]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _options(command, f"{path} {name}")
        for param in command.params:
            if isinstance(param, click.Option):
                yield f"{path} {name} {param.opts[0]}", param


def test_every_option_of_a_setting_names_its_env_var_in_help() -> None:
    settings = {f.name for f in fields(Config)}
    checked = 0
    for where, option in _options(main):
        if option.name in settings:
            assert option.show_envvar, where
            assert option.envvar == "BOOKAUDIT_" + str(option.name).upper(), where
            checked += 1
    assert checked > 20  # every command's DSN, Kafka and naming options
    result = CliRunner().invoke(main, ["consume", "alerts", "--help"], env=CLEAN_ENV)
    shown = " ".join(result.output.split())  # help wraps lines anywhere
    assert "[env var: BOOKAUDIT_ALERTS_WEBHOOK]" in shown
    assert "[env var: BOOKAUDIT_WAREHOUSE_DSN]" in shown


def test_the_config_not_click_reads_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """BOOKAUDIT_TABLES is a comma list to the Config; click would split it on spaces."""
    from bookaudit._commands import config_from

    seen: list[tuple[str, ...]] = []

    @click.command()
    @click.option("--table", "tables", multiple=True, cls=_Setting)
    @click.pass_context
    def probe(ctx: click.Context, /, tables: tuple[str, ...]) -> None:
        assert tables == ()
        seen.append(config_from(ctx, tables=tables).tables)

    monkeypatch.setenv("BOOKAUDIT_TABLES", "public.a, public.b")
    result = CliRunner().invoke(probe, [])
    assert result.exit_code == 0, result.output
    assert seen == [("public.a", "public.b")]


def test_one_format_option_for_every_read_command() -> None:
    formats = {
        where: tuple(option.type.choices)
        for where, option in _options(main)
        if option.name == "fmt" and isinstance(option.type, click.Choice)
    }
    assert len(formats) >= 5
    assert set(formats.values()) == {("table", "json", "csv")}


def test_retry_backoff_starts_again_after_a_long_healthy_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three quick failures back off 1, 2, 4 s; a failure after an hour of work waits 1 s again."""
    import time

    import bookaudit.cli as cli
    from bookaudit.errors import TransientError

    clock = [0.0]
    slept: list[float] = []
    runs = iter([0.0, 0.0, 0.0, 3600.0, None])  # how long each attempt works before it fails

    def attempt() -> str:
        worked = next(runs)
        if worked is None:
            return "done"
        clock[0] += worked
        raise TransientError("broker restarting")

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(cli, "log", lambda _m: None)
    assert cli.with_retry(attempt, max_attempts=None) == "done"
    assert slept == [1.0, 2.0, 4.0, 1.0]
