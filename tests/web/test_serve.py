"""Where `bookaudit serve` may listen, its credential check and the reader DSN (no services)."""

from __future__ import annotations

import base64

import pytest
from psycopg.conninfo import conninfo_to_dict

from bookaudit.config import Secret
from bookaudit.errors import ConfigError
from bookaudit.web.app import create_app
from bookaudit.web.serve import ServeSettings, check_binding, reader_dsn


def test_loopback_needs_no_credentials_any_other_address_does() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_binding(host, None, None, None)
    for host in ("0.0.0.0", "10.0.0.5", "::", "example.org"):
        with pytest.raises(ConfigError, match=f"refusing to listen on {host} without credentials"):
            check_binding(host, None, None, None)
    check_binding("0.0.0.0", "token", None, None)
    check_binding("0.0.0.0", None, "office", "pw")
    with pytest.raises(ConfigError, match="must be set together"):
        check_binding("127.0.0.1", None, "office", None)


def test_reader_dsn_takes_the_read_only_role_and_keeps_other_options() -> None:
    parts = conninfo_to_dict(reader_dsn("dbname=wh options='-c search_path=audit'"))
    assert parts["dbname"] == "wh"
    assert parts["options"] == (
        "-c search_path=audit -c role=bookaudit_reader -c default_transaction_read_only=on"
    )


def test_credentials_are_required_once_configured() -> None:
    settings = ServeSettings(
        reader_dsn=Secret("dbname=unused"), host="10.0.0.5", port=1, source=None,
        token=Secret("s3cret"), user="office", password=Secret("pw"),
    )  # fmt: skip
    client = create_app(settings).test_client()
    assert client.get("/healthz").status_code == 401
    assert client.get("/healthz", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/healthz", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    good = base64.b64encode(b"office:pw").decode()
    bad = base64.b64encode(b"office:nope").decode()
    assert client.get("/healthz", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/healthz", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    assert client.get("/healthz", headers={"Authorization": "Basic !!"}).status_code == 401
