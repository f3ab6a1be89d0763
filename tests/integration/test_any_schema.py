"""Any schema by configuration: the default alerts follow the entity map, and `map check`
names each mistake of a map against the real source catalog, on both schemas."""

from __future__ import annotations

import json

import psycopg

from devstack import StackEnv
from tests.integration.harness import Pipeline
from tests.integration.schemas import JOBS, JOBS_MAP


def test_default_alerts_follow_the_entity_map(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    booking = p.play_day()
    p.flow()
    p.alerts()

    listed = json.loads(p.cli("alerts", "list", "--format", "json").stdout)
    assert [(a["rule"], a["booking_id"], a["old_price"], a["new_price"]) for a in listed] == [
        ("price-by-unauthorised-role", booking, "189.50", "169.50"),
        ("large-price-change-without-approval", booking, "189.50", "169.50"),
        ("price-change-after-invoice-sent", booking, "189.50", "169.50"),
    ]
    assert all(a["audit_change"] is not None for a in listed)
    shown = p.cli("alerts", "rules").stdout
    assert f"watch {p.schema.entity_map.booking.table}: booking = " in shown


def test_map_check_passes_on_a_fitting_map(schema_pipeline: Pipeline) -> None:
    result = schema_pipeline.cli("map", "check")
    assert result.stdout.startswith("map ok (")
    assert f"booking {schema_pipeline.schema.entity_map.booking.table}" in result.stdout


def test_map_check_names_each_mistake_in_one_line(pipeline: Pipeline) -> None:
    """The jobs map against the sample database: wrong tables; then a near miss on the jobs
    database itself: a column typo, a key that is not the primary key, an unaudited table."""
    p = pipeline
    config = p.spawn_log("map-check").with_suffix(".toml")
    config.write_text(JOBS_MAP)
    env_args = ("--config", str(config), "map", "check")
    wrong = p.cli(*env_args, check=False)
    assert wrong.returncode == 1
    lines = wrong.stdout.splitlines()
    assert lines[0] == f"{config}: [map.booking]: table ops.jobs does not exist in the source"
    assert len(lines) == 5 and all("does not exist in the source" in line for line in lines)

    with p.owner() as conn:  # DDL: the schema's owner, not the application
        conn.execute("CREATE SCHEMA ops")
        conn.execute("CREATE TABLE ops.clients (client_no text PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE ops.jobs (id bigint PRIMARY KEY, job_no text UNIQUE, client_ref text, "
            "window_from timestamptz, window_to timestamptz, state text, quoted_total numeric, "
            "technician text, modified_at timestamptz)"
        )
    p.install(["ops.clients"])
    near = JOBS_MAP.replace('technician"]', 'tech"]').split("[[map.related]]")[0]
    config.write_text(near)
    result = p.cli(*env_args, check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{config}: [map.booking]: assignment column 'tech' is not a column of ops.jobs",
        f"{config}: [map.booking]: ops.jobs is not audited: add --table ops.jobs to "
        "`bookaudit source install`",
        f"{config}: [map.booking]: key 'job_no' is not the primary key of ops.jobs "
        "(primary key: id)",
    ]
    config.unlink()


def test_install_init_and_apply_take_the_map_from_bookaudit_toml(stack: StackEnv) -> None:
    """With a [map] in bookaudit.toml, `source install` audits its tables, `warehouse init`
    stores it for the configured source, and `map apply` for another."""
    p = Pipeline(stack, schema=JOBS)
    with psycopg.connect(stack.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{p.name}_src"')
        admin.execute(f'CREATE DATABASE "{p.name}_wh"')
    try:
        JOBS.create(p.source_dsn)
        installed = p.cli("source", "install")
        assert (
            "auditing ops.jobs, ops.clients, ops.job_notes, billing.invoices, billing.payments"
            in (installed.stderr)
        )
        assert p.cli("map", "check").stdout.startswith("map ok (")
        init = p.cli("warehouse", "init")
        assert f"source 'bookings' uses {p.config_path}" in init.stderr
        p.cli("map", "apply", "--source", "jobs-eu")
        maps = p.warehouse("SELECT source, origin FROM audit.entity_maps ORDER BY source")
        assert maps == [
            ("*", "built-in sample map"),
            ("bookings", str(p.config_path)),
            ("jobs-eu", str(p.config_path)),
        ]
        booking = p.warehouse(
            "SELECT table_name, key_column FROM audit.entity_tables "
            "WHERE source = 'jobs-eu' AND kind = 'booking'"
        )
        assert booking == [("jobs", "job_no")]
    finally:
        p.drop()
