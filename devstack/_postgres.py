"""Runs the stack's throw-away PostgreSQL cluster from Debian's server binaries."""

from __future__ import annotations

import glob
import os
import pwd
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from bookaudit.errors import TerminalError

PG_USER = "postgres"
DATABASES = ("bookings", "audit")
HOST = "127.0.0.1"
_INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"
# sun_path is 108 bytes including the NUL; postgres refuses longer socket paths at startup.
_SOCKET_PATH_MAX = 107
_START_TIMEOUT_S = 60
FALLBACK_PREFIX = "bookaudit-pg-"

_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    # Throw-away data: crash safety of the files is worthless, speed is not. synchronous_commit
    # stays on so commit semantics (and the replication tests relying on them) are real.
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
    # The writer bench reads when each audit row became visible from its commit timestamp,
    # after the run, rather than by polling the warehouse beside what it measures.
    "track_commit_timestamp": "on",
}

_HBA = """\
# Written by devstack: a throw-away local cluster, trusted on loopback only.
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   trust
host    replication  all   127.0.0.1/32   trust
"""


def dsn(port: int, dbname: str) -> str:
    """The libpq URL of one database of the cluster."""
    return f"postgresql://{PG_USER}@{HOST}:{port}/{dbname}"


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file joined by ' | ', so an error message stays one line."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else f"(empty log at {path})"


def process_alive(pid: int, marker: str) -> bool:
    """True if pid runs and its command line contains marker (guards against pid reuse)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state field follows the parenthesised command name, which may itself contain spaces.
    if status.rpartition(")")[2].split()[0] == "Z":
        _reap(pid)
        return False
    return marker.encode() in cmdline


def _reap(pid: int) -> None:
    # Only a child of ours (a stack started in-process, e.g. by a test) can be reaped here.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return


def terminate(pid: int, marker: str, grace_s: float, signals: Sequence[int]) -> None:
    """Send each signal in turn, waiting grace_s for an exit after each, then SIGKILL."""
    for sig in (*signals, signal.SIGKILL):
        if not process_alive(pid, marker):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not process_alive(pid, marker):
                return
            time.sleep(0.1)
    if process_alive(pid, marker):
        raise TerminalError(f"process {pid} ({marker}) survived SIGKILL; stop it by hand")


def find_bin_dir(progress: Callable[[str], None]) -> Path:
    """The newest Debian PostgreSQL bin dir; missing packages are installed by one script only."""
    found = newest_bin_dir()
    if found is not None:
        return found
    raise TerminalError(
        f"no PostgreSQL server binaries: nothing matches {_INITDB_GLOB}; "
        "run `.ci/install-deps` as root (it installs postgresql, Java 17 and Maven)"
    )


def newest_bin_dir() -> Path | None:
    """The bin dir of the newest installed Debian PostgreSQL major version, if any."""

    def major(initdb: str) -> float:
        version = Path(initdb).parent.parent.name
        return float(version) if version.replace(".", "", 1).isdigit() else -1.0

    candidates = sorted(glob.glob(_INITDB_GLOB), key=major)
    return Path(candidates[-1]).parent if candidates else None


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_argv(argv: Sequence[str]) -> list[str]:
    # Postgres refuses to run as root, so as root every server tool runs as the postgres user.
    if _as_root():
        return ["runuser", "-u", PG_USER, "--", *argv]
    return list(argv)


def _run(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> str:
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise TerminalError(f"{what}: executable not found: {exc.filename}") from exc
    if done.returncode != 0:
        output = " | ".join(
            line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()
        )[-1500:]
        detail = f"; log: {tail(log)}" if log is not None else ""
        raise TerminalError(f"{what} failed (exit {done.returncode}): {output}{detail}")
    return done.stdout


def _ensure_os_user() -> None:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        _run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/bin/bash",
                PG_USER,
            ],
            what=f"useradd {PG_USER}",
        )


def place(link: Path, progress: Callable[[str], None]) -> Path:
    """Create the cluster's dir at link, or in /tmp behind a symlink at link; return the real dir.

    The fallback exists because, as root, the server runs as the postgres user, which cannot
    enter a state dir below e.g. /root (mode 700); and because a deep state dir would make the
    unix socket path longer than the kernel allows.
    """
    longest_socket = link / "run" / ".s.PGSQL.65535"
    if len(str(longest_socket)) <= _SOCKET_PATH_MAX and _reachable(link.parent):
        link.mkdir()
        return link
    # mkdtemp: a fresh private dir with an unguessable name; the link is how it is found again.
    real = Path(tempfile.mkdtemp(prefix=FALLBACK_PREFIX))
    link.symlink_to(real, target_is_directory=True)
    progress(f"postgres: {link} is unusable for the server ({_reason(link)}); using {real}")
    return real


def _reason(link: Path) -> str:
    if len(str(link / "run" / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
        return "unix socket path too long"
    return f"not reachable by the {PG_USER} user"


def _reachable(directory: Path) -> bool:
    if not _as_root():
        return True
    _ensure_os_user()
    done = subprocess.run(
        ["runuser", "-u", PG_USER, "--", "test", "-x", str(directory)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def init_cluster(bin_dir: Path, pg_dir: Path, port: int) -> None:
    """initdb a fresh cluster in pg_dir/data, configured for logical replication."""
    data, run_dir = pg_dir / "data", pg_dir / "run"
    socket = run_dir / f".s.PGSQL.{port}"
    if len(str(socket)) > _SOCKET_PATH_MAX:
        raise TerminalError(
            f"state dir path too long for a unix socket ({socket} has {len(str(socket))} "
            f"bytes, max {_SOCKET_PATH_MAX}): pass a shorter --dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if _as_root():
        _ensure_os_user()
        account = pwd.getpwnam(PG_USER)
        for path in (pg_dir, run_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
    _run(
        _pg_argv(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        ),
        what="initdb",
        cwd=pg_dir,
    )
    settings = {**_SETTINGS, "port": str(port), "unix_socket_directories": f"'{run_dir}'"}
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# bookaudit stack settings\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    (data / "pg_hba.conf").write_text(_HBA)


def start(bin_dir: Path, pg_dir: Path, port: int) -> int:
    """Start the cluster, wait until it accepts connections, return the postmaster pid."""
    data, log = pg_dir / "data", pg_dir / "postgres.log"
    if _as_root():
        # The log file must be writable by the server user, and pg_ctl creates it as that user.
        log.touch()
        account = pwd.getpwnam(PG_USER)
        os.chown(log, account.pw_uid, account.pw_gid)
    _run(
        _pg_argv(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "-s",
                "start",
            ]
        ),
        what=f"pg_ctl start (port {port})",
        cwd=pg_dir,
        log=log,
    )
    pid = postmaster_pid(pg_dir)
    if pid is None:
        raise TerminalError(f"postgres started but wrote no pid file; log: {tail(log)}")
    wait_ready(port, log)
    return pid


def _marker(pg_dir: Path) -> str:
    # pg_ctl starts the postmaster with `-D <data dir>`, which is unique to this stack, so a
    # recycled pid or another cluster's postmaster is never mistaken for ours.
    return str(pg_dir / "data")


def alive(pid: int, pg_dir: Path) -> bool:
    """True if pid is the running postmaster of the cluster in pg_dir."""
    return process_alive(pid, _marker(pg_dir))


def postmaster_pid(pg_dir: Path) -> int | None:
    """The pid the running postmaster recorded in its data dir, if any."""
    try:
        first = (pg_dir / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    return int(first) if first.strip().isdigit() else None


def wait_ready(port: int, log: Path, timeout_s: float = _START_TIMEOUT_S) -> None:
    """Block until the cluster answers a query over TCP, else fail with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        error = probe(port)
        if error is None:
            return
        if time.monotonic() > deadline:
            raise TerminalError(
                f"postgres on {HOST}:{port} not ready after {timeout_s:.0f}s ({error}); "
                f"log: {tail(log)}"
            )
        time.sleep(0.2)


def probe(port: int) -> str | None:
    """None if the cluster answers on port, else the connection error as one line."""
    try:
        with psycopg.connect(dsn(port, "postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc).strip().replace("\n", " ")
    return None


def create_databases(port: int) -> None:
    """Create the source and warehouse databases (CREATE DATABASE cannot run in a transaction)."""
    with psycopg.connect(dsn(port, "postgres"), autocommit=True) as conn:
        for name in DATABASES:
            conn.execute(f'CREATE DATABASE "{name}"')


def reset_databases(admin_dsn: str, names: Sequence[str], *, create: bool = True) -> None:
    """Drop each database with the replication slots that pin it (their readers terminated
    first: an active slot cannot be dropped, and any slot keeps its database from being
    dropped), then create it empty again unless `create` is False."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in names:
            # Waiting (up to 10 s) for the reader to exit: a terminated walsender holds its slot
            # until it has, and a reader whose client just quit may not have noticed yet.
            conn.execute(
                "SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = %s",
                (name,),
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            if create:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def recreate_databases(port: int) -> None:
    """Recreate the source and warehouse databases, so that a second `make demo` on the same
    stack starts from an empty bookings database."""
    reset_databases(dsn(port, "postgres"), DATABASES)


def stop(bin_dir: Path | None, pg_dir: Path, pid: int | None) -> None:
    """Fast-stop the cluster; fall back to signals if pg_ctl cannot do it."""
    pids = {p for p in (pid, postmaster_pid(pg_dir)) if p is not None}
    running = [p for p in pids if alive(p, pg_dir)]
    if not running:
        return
    if bin_dir is not None and (pg_dir / "data").is_dir():
        # pg_ctl's exit status is not checked: the liveness checks below are what counts, and
        # they escalate to signals when pg_ctl could not stop the server.
        subprocess.run(
            _pg_argv(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(pg_dir / "data"),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "-s",
                    "stop",
                ]
            ),
            cwd=pg_dir,
            capture_output=True,
            check=False,
            start_new_session=True,
        )
    for p in running:
        # SIGINT is postgres's fast shutdown and SIGQUIT its immediate one; unlike SIGKILL on the
        # postmaster, both take the backends down with it.
        terminate(p, _marker(pg_dir), 10.0, (signal.SIGINT, signal.SIGQUIT))


def crash(pid: int, pg_dir: Path) -> None:
    """An immediate shutdown (SIGQUIT): backends die at once and the next start runs crash
    recovery, as after a power cut; unlike SIGKILL of the postmaster it leaves no orphans."""
    terminate(pid, _marker(pg_dir), 10.0, (signal.SIGQUIT,))
