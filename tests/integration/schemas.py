"""The source schemas the integration suites run on: the sample one, and a field-service schema
that shares none of its names (jobs keyed by job_no, clients, invoices naming the job by
job_ref, payments that reach the job only through their invoice, in two PostgreSQL schemas)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bookaudit.demo.day import AUDITED_TABLES, create_sample_schema, play_day
from bookaudit.entity_map import Entity, EntityMap, TableRef, default_map, parse_map

# A row's primary key as the source returns it: bigint ids on the sample, text job numbers on jobs.
Key = int | str

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
    """The schema's own INSERTs for the suites' workloads (psycopg %(name)s placeholders): the
    columns a row needs differ from schema to schema; everything else goes through the map."""

    customer: str  # one customer named %(name)s, RETURNING its key
    bookings: str  # %(count)s bookings of customer %(customer)s at price %(price)s, RETURNING keys
    note: str  # one note with body %(body)s on booking %(booking)s
    # The everyday edits of one booking %(booking)s, for the attribution suites.
    price: str  # to %(price)s
    status: str  # to %(status)s
    schedule: str  # its window starting at %(start)s
    assign: str  # fieldworker %(fieldworker)s: a row of its own, or a column of the booking
    invoice: str  # for %(amount)s, numbered %(number)s where the schema numbers them, sent
    # at %(sent)s (None: not sent yet)
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

    @property
    def entity_map(self) -> EntityMap:
        if self.map_toml is None:
            return default_map()
        return parse_map(tomllib.loads(self.map_toml)["map"], f"{self.name} map")

    @property
    def bookings_table(self) -> TableRef:
        """The booking table, schema-qualified (`public.bookings`, `ops.jobs`)."""
        return self.entity_map.booking.table

    @property
    def customers_table(self) -> TableRef:
        customer = self.entity_map.customer
        assert customer is not None, f"{self.name} maps no customer table"
        return customer.table

    @property
    def booking_key(self) -> str:
        key = self.entity_map.booking.key
        assert key is not None
        return key

    def new_customer(self, conn: psycopg.Connection[tuple[Any, ...]], name: str) -> Key:
        """One customer named `name`, in the caller's transaction; returns its key."""
        row = conn.execute(self.writes.customer, {"name": name}).fetchone()
        assert row is not None
        key: Key = row[0]
        return key

    def seed(
        self, conn: psycopg.Connection[tuple[Any, ...]], count: int, price: str, name: str = "Ada"
    ) -> list[Key]:
        """One customer with `count` bookings at `price`, in the caller's transaction; returns
        the bookings' keys in the order they were written."""
        customer = self.new_customer(conn, name)
        rows = conn.execute(
            self.writes.bookings, {"customer": customer, "count": count, "price": price}
        ).fetchall()
        return sorted(r[0] for r in rows)

    def set_price(
        self, conn: psycopg.Connection[tuple[Any, ...]], bookings: list[Key], price: str
    ) -> None:
        """Every one of `bookings` to `price`, in the caller's transaction, through the map's
        price column (`price`, `quoted_total`)."""
        conn.execute(self.set_price_sql(), {"price": price, "keys": bookings})

    def set_price_sql(self, change: str = "%(price)s::numeric") -> sql.Composed:
        """UPDATE of the bookings named by %(keys)s, their price column set to `change` (SQL in
        which `{price}` would be the column: `price + 0.01` is written `{price} + 0.01`)."""
        price = self.entity_map.booking.fields.price[0]
        table = self.bookings_table
        return sql.SQL(
            "UPDATE {table} SET {price} = " + change + " WHERE {key} = ANY(%(keys)s)"
        ).format(
            table=sql.Identifier(table.schema, table.name),
            price=sql.Identifier(price),
            key=sql.Identifier(self.booking_key),
        )

    @property
    def notes(self) -> Entity:
        """The related table the map names as notes (`public.notes`, `ops.job_notes`)."""
        [notes] = [e for e in self.entity_map.related if e.kind == "note"]
        return notes

    def topic(self, prefix: str, table: TableRef | str) -> str:
        """The Kafka topic of one of the schema's tables: `<prefix>.<schema>.<table>`."""
        ref = TableRef.parse(table) if isinstance(table, str) else table
        return f"{prefix}.{ref.schema}.{ref.name}"


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
        customer="INSERT INTO customers (name) VALUES (%(name)s) RETURNING id",
        bookings="INSERT INTO bookings (customer_id, service, address, price) "
        "SELECT %(customer)s, 'Boiler check', 'Elm St ' || g, %(price)s::numeric "
        "FROM generate_series(1, %(count)s) g RETURNING id",
        note="INSERT INTO notes (booking_id, author, body) VALUES (%(booking)s, 'finn', %(body)s)",
        price="UPDATE bookings SET price = %(price)s WHERE id = %(booking)s",
        status="UPDATE bookings SET status = %(status)s WHERE id = %(booking)s",
        schedule="UPDATE bookings SET scheduled_start = %(start)s WHERE id = %(booking)s",
        assign="INSERT INTO assignments (booking_id, fieldworker) "
        "VALUES (%(booking)s, %(fieldworker)s)",
        invoice="INSERT INTO invoices (booking_id, number, amount, sent_at) "
        "VALUES (%(booking)s, %(number)s, %(amount)s, %(sent)s)",
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
        # Text keys the application makes up itself, unique across a test's seeds; the
        # zero-padded number keeps a sort of the keys in the order they were written.
        customer="INSERT INTO ops.clients (client_no, full_name) "
        "VALUES ('C-' || left(gen_random_uuid()::text, 8), %(name)s) RETURNING client_no",
        bookings="INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
        "SELECT 'J-' || %(customer)s || '-' || lpad(g::text, 6, '0'), %(customer)s, "
        "'Boiler check ' || g, %(price)s::numeric FROM generate_series(1, %(count)s) g "
        "RETURNING job_no",
        note="INSERT INTO ops.job_notes (job_ref, body) VALUES (%(booking)s, %(body)s)",
        price="UPDATE ops.jobs SET quoted_total = %(price)s WHERE job_no = %(booking)s",
        status="UPDATE ops.jobs SET state = %(status)s WHERE job_no = %(booking)s",
        schedule="UPDATE ops.jobs SET window_from = %(start)s WHERE job_no = %(booking)s",
        assign="UPDATE ops.jobs SET technician = %(fieldworker)s WHERE job_no = %(booking)s",
        invoice="INSERT INTO billing.invoices (job_ref, total, issued_at) "
        "VALUES (%(booking)s, %(amount)s, %(sent)s)",
        assigned_as=("jobs", "update"),
    ),
)

SCHEMAS = (SAMPLE, JOBS)
