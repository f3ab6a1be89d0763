"""The built wheel, installed alone in a fresh venv, runs and finds every data file it ships."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from devstack import StackEnv

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the wheel built from this checkout (and its runtime dependencies)."""
    work = tmp_path_factory.mktemp("wheel")
    # setuptools reuses ./build/lib between builds, so a module deleted from the tree would
    # still ship from there; build from nothing each time.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work), str(ROOT)],
        check=True,
    )
    (wheel,) = work.glob("bookaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # The pipeline's folders live at the top of the repository; the wheel must carry them inside
    # the one package, never as generic top-level packages.
    assert {n.split("/")[0] for n in names} == {
        "bookaudit",
        wheel.name.split("-")[0] + "-0.1.0.dist-info",
    }
    for part in ("cdc/capture.py", "consumers/audit/job.py", "schemas/envelope.avsc"):
        assert f"bookaudit/{part}" in names
    assert not any(n.startswith("bookaudit/stack") for n in names), "the dev stack is not runtime"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True)
    return venv


def _run(venv: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    # Run from a folder outside the checkout, so nothing can be imported from the source tree.
    done = subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        cwd=venv,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.fixture
def database(stack: StackEnv) -> Iterator[str]:
    name = "wheel_" + uuid.uuid4().hex[:8]
    with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(stack.admin_dsn, dbname=name)
    finally:
        with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_installed_wheel_runs_and_reads_each_data_file(wheel_venv: Path, database: str) -> None:
    location = _run(wheel_venv, "python", "-c", "import bookaudit; print(bookaudit.__file__)")
    assert str(wheel_venv) in location and str(ROOT) not in location
    assert "capture" in _run(wheel_venv, "bookaudit", "--help")
    # demo/schema.sql, then sql/source/*.sql through both install modes' plans.
    _run(
        wheel_venv,
        "python",
        "-c",
        "import sys; from bookaudit.demo.day import create_sample_schema; "
        "create_sample_schema(sys.argv[1])",
        database,
    )
    env = {"BOOKAUDIT_SOURCE_DSN": database, "BOOKAUDIT_WAREHOUSE_DSN": database, "PATH": ""}
    logical = _run(
        wheel_venv,
        "bookaudit",
        "source",
        "install",
        "--table",
        "public.bookings",
        "--dry-run",
        env=env,
    )
    assert "bookaudit.set_actor" in logical
    trigger = _run(
        wheel_venv,
        "bookaudit",
        "source",
        "install",
        "--mode",
        "trigger",
        "--table",
        "public.bookings",
        "--dry-run",
        env=env,
    )
    assert "outbox" in trigger
    assert "DROP SCHEMA" in _run(
        wheel_venv, "bookaudit", "source", "uninstall", "--dry-run", env=env
    )
    # sql/warehouse/*.sql, then schemas/*.avsc, which the capture and the alerts job parse.
    _run(wheel_venv, "bookaudit", "warehouse", "init", env=env)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('audit.row_changes')").fetchone() == (
            "audit.row_changes",
        )
    _run(
        wheel_venv,
        "python",
        "-c",
        "import bookaudit.kafka.serde as e, bookaudit.kafka.alert as s; "
        "assert e.ENVELOPE_SCHEMA and e.KEY_SCHEMA and s.ALERT_SCHEMA",
    )
    # web/templates/*.html: `bookaudit serve`'s pages render from the installed package.
    page = _run(
        wheel_venv,
        "python",
        "-c",
        "import sys; from bookaudit.config import Secret; from bookaudit.web.app import create_app; "
        "from bookaudit.web.serve import ServeSettings, reader_dsn; "
        "app = create_app(ServeSettings(Secret(reader_dsn(sys.argv[1])), '127.0.0.1', 0, None, "
        "None, None, None)); print(app.test_client().get('/log').get_data(as_text=True))",
        database,
    )
    assert "Booking History Log" in page and "No booking created or modified" in page
