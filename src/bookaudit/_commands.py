"""What every command group shares: the log line on stderr and the Config from a click context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bookaudit.config import Config, load_config


def log(message: str) -> None:
    click.echo(message, err=True)


def config_from(ctx: click.Context, /, **flags: Any) -> Config:
    """Flags, then env, then the TOML file the root `--config` names (or ./bookaudit.toml)."""
    toml = ctx.find_root().params.get("config")
    return load_config(flags=flags, toml_path=Path(toml) if toml else None)
