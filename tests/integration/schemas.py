"""The source schemas the integration suites run on: the sample one, and a field-service schema
that shares none of its names (jobs keyed by job_no, clients, invoices naming the job by
job_ref, payments that reach the job only through their invoice, in two PostgreSQL schemas)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from bookaudit.demo.day import AUDITED_TABLES, create_sample_schema, play_day
from bookaudit.entity_map import EntityMap, default_map, parse_map

JOBS_DDL = """
CREATE SCHEMA ops;
CREATE SCHEMA billing;
CREATE TABLE ops.clients (
    client_no   text PRIMARY KEY,
    full_name   text NOT NULL,
    email       text
);
CREATE TABLE ops.jobs (
    job_no        text PRIMARY KEY,
    client_ref    text NOT NULL REFERENCES ops.clients (client_no),
    title         text NOT NULL,
    window_from   timestamptz,
    window_to     timestamptz,
    state         text NOT NULL DEFAULT 'open',
    quoted_total  numeric(12, 2) NOT NULL,
    technician    text,
    modified_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE ops.job_notes (
    note_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_ref   text NOT NULL REFERENCES ops.jobs (job_no),
    body      text NOT NULL
);
CREATE TABLE billing.invoices (
    invoice_no  bigint GENERATED ALWAYS AS IDENTITY (START WITH 7001) PRIMARY KEY,
    job_ref     text NOT NULL REFERENCES ops.jobs (job_no),
    total       numeric(12, 2) NOT NULL,
    issued_at   timestamptz
);
CREATE TABLE billing.payments (
    payment_id   bigint GENERATED ALWAYS AS IDENTITY (START WITH 9001) PRIMARY KEY,
    invoice_ref  bigint NOT NULL REFERENCES billing.invoices (invoice_no),
    paid         numeric(12, 2) NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
"""

JOBS_MAP = """
[map]
ignore_fields = ["modified_at"]

[map.booking]
table = "ops.jobs"
key = "job_no"
customer = "client_ref"
schedule = ["window_from", "window_to"]
price = ["quoted_total"]
status = ["state"]
assignment = ["technician"]
cancelled = ["void"]

[map.customer]
table = "ops.clients"
key = "client_no"

[[map.related]]
table = "ops.job_notes"
kind = "note"
booking = "job_ref"

[[map.related]]
table = "billing.invoices"
kind = "invoice"
key = "invoice_no"
booking = "job_ref"
sent = "issued_at"
price = ["total"]

[[map.related]]
table = "billing.payments"
kind = "payment"
through = "billing.invoices"
via = "invoice_ref"
price = ["paid"]
"""


def _as(dsn: str, app: str = "jobs-app") -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, application_name=app)


def play_jobs_day(dsn: str, psql_dsn: str | None = None) -> str:
    """The sample day's story on the jobs schema; returns the job's number. The application's
    transactions go through `dsn`; the raw psql edit through `psql_dsn` (the DBA's login)."""
    job = "J-1001"
    with _as(dsn) as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        conn.execute("INSERT INTO ops.clients VALUES ('C-77', 'Grace Hopper', 'grace@example.com')")
        conn.execute(
            "INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
            "VALUES (%s, 'C-77', 'Annual HVAC maintenance', 149.00)",
            (job,),
        )
    with _as(dsn) as conn:
        conn.execute("SELECT bookaudit.set_actor('dana', role => 'dispatcher')")
        conn.execute(
            "UPDATE ops.jobs SET window_from = '2026-11-27 09:00+01', "
            "window_to = '2026-11-27 11:00+01', state = 'scheduled', technician = 'finn', "
            "modified_at = now() WHERE job_no = %s",
            (job,),
        )
    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('alice', role => 'admin', approval_ref => 'APR-1042')"
        )
        conn.execute(
            "UPDATE ops.jobs SET quoted_total = 189.50, modified_at = now() WHERE job_no = %s",
            (job,),
        )
    with _as(dsn, "fieldworker-app") as conn:
        conn.execute("SELECT bookaudit.set_actor('finn', role => 'fieldworker')")
        conn.execute(
            "UPDATE ops.jobs SET state = 'in_progress', modified_at = now() WHERE job_no = %s",
            (job,),
        )
        conn.execute(
            "INSERT INTO ops.job_notes (job_ref, body) VALUES (%s, 'Replaced filter.')", (job,)
        )
        conn.execute(
            "UPDATE ops.jobs SET state = 'completed', modified_at = now() WHERE job_no = %s",
            (job,),
        )
    with _as(dsn) as conn:
        conn.execute("SELECT bookaudit.set_actor('olga', role => 'billing')")
        conn.execute(
            "INSERT INTO billing.invoices (job_ref, total, issued_at) VALUES (%s, 189.50, now())",
            (job,),
        )
    with _as(dsn) as conn:
        conn.execute("SELECT bookaudit.set_actor('olga', role => 'billing')")
        conn.execute(
            "INSERT INTO billing.payments (invoice_ref, paid) "
            "SELECT invoice_no, total FROM billing.invoices WHERE job_ref = %s",
            (job,),
        )
    with _as(psql_dsn or dsn, "psql") as conn:
        conn.execute("UPDATE ops.jobs SET quoted_total = 169.50 WHERE job_no = %s", (job,))
    return job


def _create_jobs(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(JOBS_DDL.encode())


@dataclass(frozen=True)
class Writes:
    """The application's everyday writes as one schema spells them, for workloads that must
    mean the same on every schema. Named parameters: %(b)s a booking's key, %(c)s a customer's,
    %(n)s a count, %(v)s a value (price, status, start, amount), %(who)s a person, %(body)s a
    note's text, %(number)s an invoice number, %(sent)s when an invoice went out (or None);
    a statement ignores the ones its schema has no column for."""

    customer: str  # one customer; returns its key
    bookings: str  # %(n)s bookings of customer %(c)s priced %(v)s; returns their keys as text
    price: str
    status: str
    schedule: str  # the start of the booking's window
    note: str
    assign: str  # a fieldworker assigned: a row of its own, or a column of the booking
    invoice: str
    assigned_as: tuple[str, str]  # the (table, action) an assignment is recorded as


@dataclass(frozen=True)
class Schema:
    """A source schema: how to create it, what to audit, its entity map, and its day."""

    name: str
    create: Callable[[str], None]
    tables: tuple[str, ...]
    map_toml: str | None  # None: the built-in sample map
    play_day: Callable[[str, str], str]  # (application DSN, owner DSN) -> booking
    # The sample schema's table names as this schema spells them, for shared assertions.
    names: dict[str, str]
    writes: Writes

    def seed(self, conn: psycopg.Connection[Any], bookings: int, price: str) -> list[str]:
        """One new customer with `bookings` bookings, in the caller's transaction; returns the
        bookings' keys as text, in key order."""
        customer = conn.execute(self.writes.customer).fetchone()
        assert customer is not None
        rows = conn.execute(self.writes.bookings, {"c": customer[0], "n": bookings, "v": price})
        return [str(r[0]) for r in rows.fetchall()]

    @property
    def entity_map(self) -> EntityMap:
        if self.map_toml is None:
            return default_map()
        return parse_map(tomllib.loads(self.map_toml)["map"], f"{self.name} map")


SAMPLE = Schema(
    name="sample",
    create=create_sample_schema,
    tables=AUDITED_TABLES,
    map_toml=None,
    play_day=lambda app, owner: str(play_day(app, lambda _m: None, psql_dsn=owner)),
    names={
        "bookings": "bookings",
        "customers": "customers",
        "notes": "notes",
        "invoices": "invoices",
        "payments": "payments",
        "price": "price",
        "customer_id": "customer_id",
        "updated_at": "updated_at",
    },
    writes=Writes(
        customer="INSERT INTO customers (name) VALUES ('Ada') RETURNING id",
        bookings="WITH made AS (INSERT INTO bookings (customer_id, service, address, price) "
        "SELECT %(c)s, 'Boiler check', 'Elm St ' || g, %(v)s::numeric "
        "FROM generate_series(1, %(n)s) g RETURNING id) SELECT id::text FROM made ORDER BY id",
        price="UPDATE bookings SET price = %(v)s WHERE id = %(b)s",
        status="UPDATE bookings SET status = %(v)s WHERE id = %(b)s",
        schedule="UPDATE bookings SET scheduled_start = %(v)s WHERE id = %(b)s",
        note="INSERT INTO notes (booking_id, author, body) VALUES (%(b)s, %(who)s, %(body)s)",
        assign="INSERT INTO assignments (booking_id, fieldworker) VALUES (%(b)s, %(who)s)",
        invoice="INSERT INTO invoices (booking_id, number, amount, sent_at) "
        "VALUES (%(b)s, %(number)s, %(v)s, %(sent)s)",
        assigned_as=("assignments", "insert"),
    ),
)

JOBS = Schema(
    name="jobs",
    create=_create_jobs,
    tables=("ops.clients", "ops.jobs", "ops.job_notes", "billing.invoices", "billing.payments"),
    map_toml=JOBS_MAP,
    play_day=play_jobs_day,
    names={
        "bookings": "jobs",
        "customers": "clients",
        "notes": "job_notes",
        "invoices": "invoices",
        "payments": "payments",
        "price": "quoted_total",
        "customer_id": "client_ref",
        "updated_at": "modified_at",
    },
    writes=Writes(
        # Text keys numbered on from the rows already there, so a test may seed twice.
        customer="INSERT INTO ops.clients (client_no, full_name) "
        "SELECT 'CL-' || (count(*) + 1), 'Ada' FROM ops.clients RETURNING client_no",
        bookings="WITH made AS (INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
        "SELECT 'J-' || lpad((k.n + g)::text, 6, '0'), %(c)s, 'Boiler check', %(v)s::numeric "
        "FROM generate_series(1, %(n)s) g, (SELECT count(*) AS n FROM ops.jobs) k "
        "RETURNING job_no) SELECT job_no FROM made ORDER BY job_no",
        price="UPDATE ops.jobs SET quoted_total = %(v)s WHERE job_no = %(b)s",
        status="UPDATE ops.jobs SET state = %(v)s WHERE job_no = %(b)s",
        schedule="UPDATE ops.jobs SET window_from = %(v)s WHERE job_no = %(b)s",
        note="INSERT INTO ops.job_notes (job_ref, body) VALUES (%(b)s, %(body)s)",
        assign="UPDATE ops.jobs SET technician = %(who)s WHERE job_no = %(b)s",
        invoice="INSERT INTO billing.invoices (job_ref, total, issued_at) "
        "VALUES (%(b)s, %(v)s, %(sent)s)",
        assigned_as=("jobs", "update"),
    ),
)

SCHEMAS = (SAMPLE, JOBS)
