"""Builds the one frozen Config from CLI flags, then BOOKAUDIT_* env vars, then bookaudit.toml."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bookaudit.entity_map import EntityMap, default_map, map_from_toml
from bookaudit.errors import ConfigError
from bookaudit.model import MODES

ENV_PREFIX = "BOOKAUDIT_"
DEFAULT_TOML = "bookaudit.toml"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
SNAPSHOTS = ("initial", "never")


class Secret(str):
    """A DSN or password: usable as a string, but never printed whole in a repr or a log line."""

    def __repr__(self) -> str:
        return "Secret('" + redact_dsn(str(self)) + "')"


def redact_dsn(dsn: str) -> str:
    """Hide a password in either DSN form, so a config can be shown in errors safely."""
    dsn = re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn)
    return re.sub(r"(://[^:/@]+:)([^@]+)(@)", r"\1***\3", dsn)


@dataclass(frozen=True)
class Config:
    """Every setting a bookaudit command can read; each command checks the ones it needs."""

    source_dsn: Secret | None = None
    warehouse_dsn: Secret | None = None
    kafka_bootstrap: str | None = None
    slot: str = "bookaudit"
    publication: str = "bookaudit"
    topic_prefix: str = "bookaudit"
    source_name: str = "bookings"
    group_id: str = "bookaudit-audit"
    batch_size: int = 500
    tables: tuple[str, ...] = field(default_factory=tuple)
    alerts_group_id: str = "bookaudit-alerts"
    alerts_rules: str | None = None
    alerts_webhook: Secret | None = None
    # logical: pgoutput over a replication slot; trigger: row triggers + outbox relay.
    mode: str = "logical"
    # source install: initial records the existing rows as a baseline (op r); never skips it.
    snapshot: str = "initial"
    # Which source's rows the read-side commands show; needed once several feed one warehouse.
    source: str | None = None
    # `bookaudit serve`: loopback by default; any other address needs a token or basic auth.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8765
    serve_token: Secret | None = None
    serve_user: str | None = None
    serve_password: Secret | None = None
    # Only from bookaudit.toml's [map]; the sample schema's map otherwise.
    entity_map: EntityMap = field(default_factory=default_map)

    def need(self, name: str) -> str:
        """The setting a command cannot run without; unset, it fails naming the flag and the env
        var a user should set, rather than deep inside a connection call."""
        value = getattr(self, name)
        if not value:
            raise ConfigError(
                f"{name} is not set: pass --{name.replace('_', '-')} "
                f"or set {ENV_PREFIX}{name.upper()}"
            )
        return str(value)


_INT_FIELDS = {"batch_size", "serve_port"}
_DSN_FIELDS = {"source_dsn", "warehouse_dsn"}
# A webhook URL often carries a token, so it is kept out of reprs like a DSN.
_SECRET_FIELDS = {"source_dsn", "warehouse_dsn", "alerts_webhook", "serve_token", "serve_password"}


def _check_dsn(name: str, raw: str, origin: str) -> None:
    """Parse it now: libpq's own complaint quotes the text around the mistake, which may be the
    password, so the message names the setting and never the value."""
    try:
        conninfo_to_dict(raw)
    except psycopg.ProgrammingError:
        raise ConfigError(
            f"{origin}: {name} is not a valid connection string (expected key=value pairs or a "
            "postgresql:// URL; a value with spaces needs single quotes); the value is not shown "
            "because it may hold a password"
        ) from None


def _coerce(name: str, raw: Any, origin: str) -> Any:
    if name in _INT_FIELDS:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: {name} must be an integer, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"{origin}: {name} must be positive, got {value}")
        return value
    if name == "tables":
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(str(t).strip() for t in items if str(t).strip())
    if not isinstance(raw, str):
        raise ConfigError(f"{origin}: {name} must be a string, got {raw!r}")
    if name == "alerts_webhook" and not re.match(r"^https?://[^/\s]+", raw):
        raise ConfigError(f"{origin}: alerts_webhook must be an http:// or https:// URL")
    if name in _DSN_FIELDS:
        _check_dsn(name, raw, origin)
    if name in _SECRET_FIELDS:
        return Secret(raw)
    if name in {"slot", "publication"} and not _IDENT.match(raw):
        raise ConfigError(
            f"{origin}: {name} {raw!r} must be a lower-case identifier (letters, digits, _)"
        )
    if name == "snapshot" and raw not in SNAPSHOTS:
        raise ConfigError(f"{origin}: snapshot {raw!r} must be one of {', '.join(SNAPSHOTS)}")
    if name == "mode" and raw not in MODES:
        raise ConfigError(f"{origin}: mode {raw!r} must be one of {', '.join(MODES)}")
    if name == "topic_prefix" and not _TOPIC.match(raw):
        raise ConfigError(f"{origin}: topic_prefix {raw!r} may hold only letters, digits, . _ -")
    return raw


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: Path | None = None,
) -> Config:
    """Merge the three sources, highest precedence first: flags, env, TOML file."""
    env = os.environ if env is None else env
    known = {f.name for f in fields(Config)} - {"entity_map"}
    values: dict[str, Any] = {}

    env_toml = env.get(ENV_PREFIX + "CONFIG") or None
    explicit_toml = toml_path is not None or env_toml is not None
    path = toml_path or Path(env_toml or DEFAULT_TOML)
    if path.is_file():
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        found = map_from_toml(doc, str(path))
        if found is not None:
            values["entity_map"] = found
        section = doc.get("bookaudit", doc)
        for key, raw in section.items():
            if not isinstance(raw, dict):
                if key not in known:
                    raise ConfigError(f"{path}: unknown setting {key!r}")
                values[key] = _coerce(key, raw, str(path))
    elif explicit_toml:
        raise ConfigError(f"config file {path} does not exist")

    for name in known:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, ENV_PREFIX + name.upper())

    for name, raw in (flags or {}).items():
        if raw is None or raw == ():
            continue
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw, "--" + name.replace("_", "-"))

    return Config(**values)
