"""Config precedence (flags, then env, then TOML) and one-line errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookaudit.config import Secret, load_config
from bookaudit.errors import ConfigError


def test_flags_beat_env_beat_toml(tmp_path: Path) -> None:
    toml = tmp_path / "bookaudit.toml"
    toml.write_text('[bookaudit]\nslot = "from_toml"\ntopic_prefix = "t"\nbatch_size = 7\n')
    env = {"BOOKAUDIT_SLOT": "from_env", "BOOKAUDIT_TOPIC_PREFIX": "e"}
    cfg = load_config(flags={"slot": "from_flag"}, env=env, toml_path=toml)
    assert (cfg.slot, cfg.topic_prefix, cfg.batch_size) == ("from_flag", "e", 7)


def test_dsn_is_a_secret_that_does_not_print_its_password() -> None:
    cfg = load_config(env={"BOOKAUDIT_SOURCE_DSN": "postgresql://u:hunter2@h/db"})
    assert isinstance(cfg.source_dsn, Secret)
    assert "hunter2" not in repr(cfg)
    assert cfg.source_dsn == "postgresql://u:hunter2@h/db"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BOOKAUDIT_SLOT": "Bad-Slot"}, "BOOKAUDIT_SLOT: slot 'Bad-Slot'"),
        ({"BOOKAUDIT_BATCH_SIZE": "many"}, "BOOKAUDIT_BATCH_SIZE: batch_size must be an integer"),
        ({"BOOKAUDIT_TOPIC_PREFIX": "a b"}, "topic_prefix 'a b'"),
    ],
)
def test_bad_values_name_their_origin(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_bad_toml_and_missing_file_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "b.toml"
    broken.write_text("slot = [")
    with pytest.raises(ConfigError, match=r"b\.toml: not valid TOML"):
        load_config(env={}, toml_path=broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={}, toml_path=tmp_path / "nope.toml")
    unknown = tmp_path / "u.toml"
    unknown.write_text('slott = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'slott'"):
        load_config(env={}, toml_path=unknown)


def test_require_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match="BOOKAUDIT_KAFKA_BOOTSTRAP"):
        load_config(env={}).need("kafka_bootstrap")


def test_mode_defaults_to_logical_and_is_validated() -> None:
    assert load_config(env={}).mode == "logical"
    assert load_config(env={"BOOKAUDIT_MODE": "trigger"}).mode == "trigger"
    assert load_config(flags={"mode": "logical"}, env={"BOOKAUDIT_MODE": "trigger"}).mode == (
        "logical"
    )
    with pytest.raises(ConfigError, match="BOOKAUDIT_MODE: mode 'outbox' must be one of"):
        load_config(env={"BOOKAUDIT_MODE": "outbox"})
