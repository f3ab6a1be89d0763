"""Where and how `bookaudit serve` may listen, and the read-only role it reads through."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bookaudit.config import Config, Secret
from bookaudit.errors import ConfigError, TerminalError

READER_ROLE = "bookaudit_reader"


@dataclass(frozen=True)
class ServeSettings:
    reader_dsn: Secret
    host: str
    port: int
    source: str | None
    token: Secret | None
    user: str | None
    password: Secret | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, user: str | None, password: str | None) -> None:
    """Loopback needs nothing; any other address needs a token or a user and password."""
    if (user is None) != (password is None):
        raise ConfigError("serve_user and serve_password must be set together")
    if not is_loopback(host) and not token and not (user and password):
        raise ConfigError(
            f"serve: refusing to listen on {host} without credentials: set serve_token, or "
            "serve_user and serve_password (BOOKAUDIT_SERVE_*), or use --host 127.0.0.1"
        )


def reader_dsn(dsn: str) -> str:
    """The warehouse DSN with the read-only role and read-only transactions set at connect."""
    options = conninfo_to_dict(dsn).get("options") or ""
    extra = f"-c role={READER_ROLE} -c default_transaction_read_only=on"
    return make_conninfo(dsn, options=f"{options} {extra}".strip())


def check_read_only(dsn: str) -> None:
    """Connect as the pages will and prove the connection cannot write the audit tables."""
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT current_user, has_table_privilege('audit.row_changes', 'INSERT') "
                "OR has_table_privilege('audit.row_changes', 'UPDATE') "
                "OR has_table_privilege('audit.chain', 'INSERT')"
            ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise TerminalError(
            f"serve: this login may not take the read-only role {READER_ROLE}: run "
            f"`bookaudit warehouse init` as the warehouse owner, or GRANT {READER_ROLE} TO it"
        ) from None
    except psycopg.errors.UndefinedTable:
        raise TerminalError(
            "serve: the warehouse has no audit schema: run `bookaudit warehouse init`"
        ) from None
    except psycopg.OperationalError as exc:
        raise TerminalError(f"serve: cannot connect to the warehouse: {str(exc).strip()}") from None
    assert row is not None
    if row[1]:
        raise TerminalError(
            f"serve: role {row[0]} can write the audit tables; refusing to serve with it"
        )


def settings_from(cfg: Config, **overrides: Any) -> ServeSettings:
    warehouse_dsn = cfg.need("warehouse_dsn")
    host = overrides.get("host") or cfg.serve_host
    port = int(overrides.get("port") or cfg.serve_port)
    check_binding(host, cfg.serve_token, cfg.serve_user, cfg.serve_password)
    return ServeSettings(
        reader_dsn=Secret(reader_dsn(warehouse_dsn)),
        host=host,
        port=port,
        source=cfg.source,
        token=cfg.serve_token,
        user=cfg.serve_user,
        password=cfg.serve_password,
    )
