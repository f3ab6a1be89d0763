"""The dev stack's command line: `python -m devstack up|down|status|env`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

import devstack as stack_api
from bookaudit.errors import TerminalError

_F = TypeVar("_F", bound=Callable[..., object])


def _dir_option(func: _F) -> _F:
    return click.option(
        "--dir",
        "state_dir",
        envvar="BOOKAUDIT_STACK_DIR",
        show_envvar=True,
        default=".stack",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="State dir holding the stack's data, logs and stack.json.",
    )(func)


def _progress(line: str) -> None:
    # Progress goes to stderr so that stdout carries only export lines: `eval "$(... up)"` works.
    click.echo(line, err=True)


@click.group()
def stack() -> None:
    """Run a throw-away local PostgreSQL + Kafka stack for development and tests."""


@stack.command()
@_dir_option
def up(state_dir: Path) -> None:
    """Start the stack (a no-op if it already runs), then print its export lines."""
    env = stack_api.up(state_dir, progress=_progress)
    for line in env.export_lines():
        click.echo(line)


@stack.command()
@_dir_option
def down(state_dir: Path) -> None:
    """Stop the stack and delete its data."""
    stack_api.down(state_dir)
    _progress(f"stack down ({state_dir})")


@stack.command()
@_dir_option
@click.argument("service", type=click.Choice(stack_api.SERVICES))
@click.option("--clean", is_flag=True, help="stop it cleanly instead of as a crash would")
def restart(state_dir: Path, service: str, clean: bool) -> None:
    """Restart one service on its port and data (kill -9 or immediate shutdown by default)."""
    stack_api.restart(state_dir, service, crash=not clean, progress=_progress)


@stack.command()
@_dir_option
def status(state_dir: Path) -> None:
    """Print one line per service."""
    for service, description in stack_api.status(state_dir).items():
        click.echo(f"{service}: {description}")


@stack.command()
@_dir_option
def env(state_dir: Path) -> None:
    """Print export lines for the running stack: eval "$(python -m devstack env)"."""
    current = stack_api.read_env(state_dir)
    if current is None:
        raise TerminalError(
            f"no stack is running in {state_dir.resolve()}: run `python -m devstack up` first"
        )
    for line in current.export_lines():
        click.echo(line)


@stack.command("fresh-databases")
@_dir_option
def fresh_databases(state_dir: Path) -> None:
    """Drop and create the stack's bookings and audit databases (the demo's), and their slots."""
    stack_api.fresh_databases(state_dir)
    _progress(f"bookings and audit databases recreated ({state_dir})")
