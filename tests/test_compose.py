"""docker-compose.yml cannot run here (no Docker engine), so its structure and every command in
it are checked against the CLI: an init step before the pipeline, the pipeline before the day."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from bookaudit.cli import main
from bookaudit.config import ENV_PREFIX, Config
from bookaudit.demo.day import AUDITED_TABLES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
BOOKAUDIT = {name: s for name, s in SERVICES.items() if s.get("build") == "."}
INIT = ("sample-schema", "warehouse-init", "source-install")


def resolve(args: list[str]) -> tuple[click.Command, click.Context]:
    """The command an argument list names, with its options parsed as `bookaudit` would."""
    command: click.Command = main
    path = ["bookaudit"]
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"{' '.join(path)} needs a subcommand"
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"{' '.join(path)} has no command {rest[0]!r}"
        path.append(rest.pop(0))
        command = sub
    # Parses and checks every option and argument without running the command.
    return command, command.make_context(" ".join(path), rest)


def depends(service: str) -> Mapping[str, str]:
    return {name: spec["condition"] for name, spec in SERVICES[service]["depends_on"].items()}


def after(service: str) -> set[str]:
    """Every service this one waits for, directly or not."""
    found: set[str] = set()
    todo = list(depends(service)) if "depends_on" in SERVICES[service] else []
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += list(SERVICES[name].get("depends_on", {}))
    return found


def test_the_image_runs_bookaudit_so_commands_are_bookaudit_argument_lists() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["bookaudit"]' in dockerfile
    assert set(BOOKAUDIT) >= {*INIT, "capture", "audit-writer", "alerts", "demo-day"}
    for name, service in BOOKAUDIT.items():
        assert isinstance(service["command"], list), name
        assert all(isinstance(a, str) for a in service["command"]), name


@pytest.mark.parametrize("service", sorted(BOOKAUDIT))
def test_every_command_resolves_with_the_cli(service: str) -> None:
    resolve(SERVICES[service]["command"])


def test_a_wrong_command_is_caught() -> None:
    """The check above can fail: a typo in a command or an option is refused."""
    with pytest.raises(AssertionError, match="no command 'consumer'"):
        resolve(["consumer", "audit"])
    with pytest.raises(click.NoSuchOption):
        resolve(["capture", "--exit-when-idel"])


def test_the_environment_names_config_settings() -> None:
    settings = {ENV_PREFIX + f.name.upper() for f in fields(Config)}
    env = COMPOSE["x-bookaudit-env"]
    assert set(env) <= settings
    for name in ("SOURCE_DSN", "WAREHOUSE_DSN", "KAFKA_BOOTSTRAP"):
        assert ENV_PREFIX + name in env
    for name, service in BOOKAUDIT.items():
        assert service["environment"] == env, name


def test_init_steps_run_once_and_before_the_pipeline() -> None:
    for name in INIT:
        assert SERVICES[name]["restart"] == "no", name
        assert "postgres" in after(name), name
    assert depends("source-install")["sample-schema"] == "service_completed_successfully"
    # Capture needs the publication (and the slot) that source install creates.
    assert depends("capture")["source-install"] == "service_completed_successfully"
    for consumer in ("audit-writer", "alerts"):
        assert depends(consumer)["warehouse-init"] == "service_completed_successfully"
    for name in ("capture", "audit-writer", "alerts"):
        assert depends(name)["kafka"] == "service_healthy", name
        assert SERVICES[name]["restart"] == "on-failure", name


def test_source_install_audits_the_sample_tables() -> None:
    command, ctx = resolve(SERVICES["source-install"]["command"])
    assert command.name == "install"
    assert sorted(t.split(".")[-1] for t in ctx.params["tables"]) == sorted(AUDITED_TABLES)


def test_the_day_runs_on_the_running_pipeline_and_shows_the_history() -> None:
    command, ctx = resolve(SERVICES["demo-day"]["command"])
    assert command.name == "day" and ctx.params["wait_s"] > 0
    waits = depends("demo-day")
    assert waits["source-install"] == "service_completed_successfully"
    assert waits["warehouse-init"] == "service_completed_successfully"
    assert {"capture", "audit-writer"} <= set(waits)
