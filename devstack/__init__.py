"""Starts, stops and describes the local throw-away PostgreSQL + Kafka stack used for tests."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bookaudit.errors import TerminalError
from devstack import _kafka, _postgres
from devstack._kafka import delete_topics
from devstack._postgres import reset_databases

__all__ = [
    "SERVICES",
    "StackEnv",
    "delete_topics",
    "down",
    "read_env",
    "reset_databases",
    "restart",
    "status",
    "up",
]

STATE_FILE = "stack.json"
_LOCK_FILE = "lock"
_PG_DIR = "pg"
_KAFKA_DIR = "kafka"
# Everything the stack creates in a state dir; `down` removes only these, so a careless
# `--dir .` cannot make it delete anything else.
_OWNED = (STATE_FILE, _PG_DIR, _KAFKA_DIR)
_STATE_VERSION = 1
SERVICES = ("kafka", "postgres")


@dataclass(frozen=True)
class StackEnv:
    """Where a running stack listens, in the form bookaudit's BOOKAUDIT_* settings take."""

    source_dsn: str
    warehouse_dsn: str
    kafka_bootstrap: str
    admin_dsn: str

    def export_lines(self) -> list[str]:
        """`export NAME=value` lines for a POSIX shell, values quoted with shlex.quote."""
        pairs = (
            ("BOOKAUDIT_SOURCE_DSN", self.source_dsn),
            ("BOOKAUDIT_WAREHOUSE_DSN", self.warehouse_dsn),
            ("BOOKAUDIT_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
            ("BOOKAUDIT_ADMIN_DSN", self.admin_dsn),
        )
        return [f"export {name}={shlex.quote(value)}" for name, value in pairs]


@dataclass(frozen=True)
class _State:
    """The contents of stack.json, written once both services answer."""

    pg_port: int
    pg_pid: int
    pg_bin_dir: str
    kafka_port: int
    kafka_controller_port: int
    kafka_pid: int
    kafka_version: str
    env: StackEnv

    def to_json(self) -> str:
        return json.dumps({"version": _STATE_VERSION, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> _State:
        raw: dict[str, Any] = json.loads(text)
        if raw.pop("version", None) != _STATE_VERSION:
            raise ValueError("unknown state version")
        env = StackEnv(**raw.pop("env"))
        return cls(env=env, **raw)


def up(state_dir: Path, *, progress: Callable[[str], None] = print) -> StackEnv:
    """Start PostgreSQL and Kafka in state_dir, or return the env of the healthy running stack."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # As root, postgres runs as the postgres user, which must be able to enter the state dir.
        state_dir.chmod(state_dir.stat().st_mode | 0o711)
    with _locked(state_dir):
        state = _load(state_dir)
        if state is not None and _healthy(state_dir, state):
            progress(f"stack already running in {state_dir}")
            return state.env
        if state is not None or any((state_dir / name).exists() for name in _OWNED):
            progress(f"cleaning up a stale or half-started stack in {state_dir}")
        _stop_services(state_dir, state)
        _remove_owned(state_dir)
        started = time.monotonic()
        try:
            env = _start(state_dir, progress)
        except BaseException:
            # Leave no half-started service behind; logs stay in state_dir until the next up/down.
            _stop_services(state_dir, None)
            raise
        progress(f"stack up in {time.monotonic() - started:.1f}s ({state_dir})")
        return env


def down(state_dir: Path) -> None:
    """Stop both services and delete the stack's throw-away data; a no-op if nothing runs."""
    state_dir = state_dir.resolve()
    if not state_dir.is_dir():
        return
    with _locked(state_dir):
        _stop_services(state_dir, _load(state_dir))
        _remove_owned(state_dir)
        (state_dir / _LOCK_FILE).unlink(missing_ok=True)
    if not any(state_dir.iterdir()):
        state_dir.rmdir()


def restart(
    state_dir: Path,
    service: str,
    *,
    crash: bool = True,
    down_s: float = 0.0,
    ready_timeout_s: float = 60.0,
    progress: Callable[[str], None] = print,
) -> float:
    """Stop one service of the running stack and start it again on the same port and data.

    `crash` stops it the hard way (kill -9 of the broker, an immediate shutdown of PostgreSQL,
    which then runs crash recovery); otherwise cleanly. It stays down for `down_s` seconds; a
    broker recovering its log on a busy machine may take longer than `ready_timeout_s` to serve.
    Returns how long it was unavailable, start-up included. Fault tests use this on a stack of
    their own: every client of the stack loses its connections.
    """
    if service not in SERVICES:
        raise TerminalError(f"unknown service {service!r}: choose one of {', '.join(SERVICES)}")
    state_dir = state_dir.resolve()
    with _locked(state_dir):
        state = _load(state_dir)
        if state is None or not _alive(state_dir, state):
            raise TerminalError(f"no running stack in {state_dir}: run `python -m devstack up`")
        started = time.monotonic()
        if service == "kafka":
            kafka_dir = state_dir / _KAFKA_DIR
            if crash:
                _kafka.kill(state.kafka_pid, kafka_dir)
            else:
                _kafka.stop(state.kafka_pid, kafka_dir)
            time.sleep(down_s)
            libs = _kafka.ensure_jars(progress)
            pid = _kafka.start(libs, kafka_dir, kafka_dir / "server.properties")
            _kafka.wait_ready(pid, state.env.kafka_bootstrap, kafka_dir, ready_timeout_s)
            state = replace(state, kafka_pid=pid)
        else:
            pg_dir = _pg_dir(state_dir)
            if crash:
                _postgres.crash(state.pg_pid, pg_dir)
            else:
                _postgres.stop(Path(state.pg_bin_dir), pg_dir, state.pg_pid)
            time.sleep(down_s)
            pid = _postgres.start(Path(state.pg_bin_dir), pg_dir, state.pg_port)
            state = replace(state, pg_pid=pid)
        tmp = state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(state.to_json())
        tmp.replace(state_dir / STATE_FILE)
        took = time.monotonic() - started
        progress(f"{service}: restarted in {took:.1f}s ({'crash' if crash else 'clean'})")
        return took


def status(state_dir: Path) -> dict[str, str]:
    """One human-readable line per service, e.g. {"postgres": "running on 127.0.0.1:5432"}."""
    state_dir = state_dir.resolve()
    state = _load(state_dir)
    pg_pid = state.pg_pid if state else _postgres.postmaster_pid(_pg_dir(state_dir))
    kafka_pid = state.kafka_pid if state else _kafka.recorded_pid(state_dir / _KAFKA_DIR)
    result: dict[str, str] = {}
    pg_alive = pg_pid is not None and _postgres.alive(pg_pid, _pg_dir(state_dir))
    kafka_alive = kafka_pid is not None and _kafka.alive(kafka_pid, state_dir / _KAFKA_DIR)
    if state is None:
        for name, pid, alive in (("postgres", pg_pid, pg_alive), ("kafka", kafka_pid, kafka_alive)):
            result[name] = (
                f"orphaned (pid {pid}, no {STATE_FILE}): run `python -m devstack down`"
                if alive
                else "stopped"
            )
        return result
    pg_addr = f"{_postgres.HOST}:{state.pg_port}"
    kafka_addr = state.env.kafka_bootstrap
    result["postgres"] = _describe(pg_alive, pg_addr, state.pg_pid, _postgres.probe, state.pg_port)
    result["kafka"] = _describe(kafka_alive, kafka_addr, state.kafka_pid, _kafka.probe, kafka_addr)
    return result


def read_env(state_dir: Path) -> StackEnv | None:
    """The env of the stack in state_dir from its state file, or None if it is not up."""
    state_dir = state_dir.resolve()
    state = _load(state_dir)
    if state is None or not _alive(state_dir, state):
        return None
    return state.env


def fresh_databases(state_dir: Path) -> None:
    """Recreate the stack's bookings and audit databases, for a demo that starts from nothing."""
    state_dir = state_dir.resolve()
    with _locked(state_dir):
        state = _load(state_dir)
        if state is None or not _alive(state_dir, state):
            raise TerminalError(f"no running stack in {state_dir}: run `python -m devstack up`")
        _postgres.recreate_databases(state.pg_port)


def _describe(
    alive: bool, addr: str, pid: int, probe: Callable[[Any], str | None], target: Any
) -> str:
    if not alive:
        return f"stopped (stale pid {pid}): run `python -m devstack up` to restart"
    error = probe(target)
    if error is not None:
        return f"not answering on {addr} (pid {pid}): {error}"
    return f"running on {addr}"


def _start(state_dir: Path, progress: Callable[[str], None]) -> StackEnv:
    kafka_dir = state_dir / _KAFKA_DIR
    bin_dir = _postgres.find_bin_dir(progress)
    # Fetch jars and find java before starting anything, so a missing tool fails fast with
    # nothing to undo.
    libs = _kafka.ensure_jars(progress)
    _kafka.java()
    # Picked only now, after installs and downloads, to keep the window for a port thief short.
    pg_port, kafka_port, controller_port = _free_ports(3)

    pg_dir = _postgres.place(state_dir / _PG_DIR, progress)
    progress(f"postgres: initdb with {bin_dir} in {pg_dir}")
    _postgres.init_cluster(bin_dir, pg_dir, pg_port)
    pg_pid = _postgres.start(bin_dir, pg_dir, pg_port)
    _postgres.create_databases(pg_port)
    progress(f"postgres: running on {_postgres.HOST}:{pg_port} (pid {pg_pid})")

    config = _kafka.write_config(kafka_dir, kafka_port, controller_port)
    tool = _kafka.format_storage(libs, kafka_dir, config)
    progress(f"kafka: storage formatted with {tool}, starting {_kafka.MAIN_CLASS}")
    kafka_pid = _kafka.start(libs, kafka_dir, config)
    bootstrap = f"{_kafka.HOST}:{kafka_port}"
    _kafka.wait_ready(kafka_pid, bootstrap, kafka_dir)
    progress(f"kafka: running on {bootstrap} (pid {kafka_pid})")

    env = StackEnv(
        source_dsn=_postgres.dsn(pg_port, "bookings"),
        warehouse_dsn=_postgres.dsn(pg_port, "audit"),
        kafka_bootstrap=bootstrap,
        admin_dsn=_postgres.dsn(pg_port, "postgres"),
    )
    state = _State(
        pg_port=pg_port,
        pg_pid=pg_pid,
        pg_bin_dir=str(bin_dir),
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        kafka_pid=kafka_pid,
        kafka_version=_kafka.kafka_version(),
        env=env,
    )
    tmp = state_dir / f"{STATE_FILE}.tmp"
    tmp.write_text(state.to_json())
    tmp.replace(state_dir / STATE_FILE)
    return env


def _alive(state_dir: Path, state: _State) -> bool:
    return _postgres.alive(state.pg_pid, _pg_dir(state_dir)) and _kafka.alive(
        state.kafka_pid, state_dir / _KAFKA_DIR
    )


def _healthy(state_dir: Path, state: _State) -> bool:
    return (
        _alive(state_dir, state)
        and _postgres.probe(state.pg_port) is None
        and _kafka.probe(state.env.kafka_bootstrap) is None
    )


def _stop_services(state_dir: Path, state: _State | None) -> None:
    # Pids come from stack.json when present, else from the pid files each service leaves in its
    # dir, so a stack whose `up` died halfway can still be stopped.
    _kafka.stop(state.kafka_pid if state else None, state_dir / _KAFKA_DIR)
    # Without any bin dir there is no pg_ctl to call, and _postgres.stop falls back to signals.
    bin_dir = Path(state.pg_bin_dir) if state else _postgres.newest_bin_dir()
    _postgres.stop(bin_dir, _pg_dir(state_dir), state.pg_pid if state else None)


def _pg_dir(state_dir: Path) -> Path:
    # state_dir/pg may be a symlink to a dir in /tmp (see _postgres.place); the real path is the
    # one on the postmaster's command line.
    return (state_dir / _PG_DIR).resolve()


def _remove_owned(state_dir: Path) -> None:
    link = state_dir / _PG_DIR
    if link.is_symlink():
        real = link.resolve()
        # Only a dir _postgres.place made is deleted through the link, never whatever else a
        # hand-made link might point at.
        if real.is_dir() and real.name.startswith(_postgres.FALLBACK_PREFIX):
            shutil.rmtree(real)
        link.unlink()
    for name in _OWNED:
        path = state_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (state_dir / f"{STATE_FILE}.tmp").unlink(missing_ok=True)


def _load(state_dir: Path) -> _State | None:
    try:
        text = (state_dir / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        return _State.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError):
        # A torn or foreign state file means "no usable state": callers then find the services
        # through the pid files in pg/ and kafka/, so a stack is never orphaned by it.
        return None


def _free_ports(count: int) -> list[int]:
    # All sockets stay bound until every port is picked, so the ports are distinct.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state dir, so two concurrent `up`s cannot start two stacks."""
    fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
