"""A realistic day at a field-service business, played as separate application transactions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bookaudit._resources import read_text

AUDITED_TABLES = ("customers", "bookings", "assignments", "invoices", "payments", "notes")
# The demo application's own login, as production applications have one: it owns nothing.
DEMO_APP_ROLE = "bookings_app"


def create_sample_schema(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(read_text("demo", "schema.sql").encode())


def create_app_role(
    owner_dsn: str, role: str, schemas: Sequence[str] = ("public",), password: str | None = None
) -> str:
    """A login that may read and write the tables of `schemas` and owns nothing; returns its DSN.

    Idempotent, and safe when two runs race to create the same (cluster-wide) role.
    """
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            # A concurrent creator makes this fail one way or the other; either way it exists.
            with contextlib.suppress(
                psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation
            ):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        if password is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        ident = sql.Identifier(role)
        for schema in schemas:
            name = sql.Identifier(schema)
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(name, ident))
            conn.execute(
                sql.SQL(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}"
                ).format(name, ident)
            )
            conn.execute(
                sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(name, ident)
            )
    if password is None:
        return make_conninfo(owner_dsn, user=role)
    return make_conninfo(owner_dsn, user=role, password=password)


def _as(dsn: str, app: str = "bookings-app") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, application_name=app)


def seed_existing(dsn: str, say: Callable[[str], None]) -> int:
    """Bookings the business already had before bookaudit was installed; returns one of them.

    Written as the application always wrote them, without any actor context: bookaudit is not
    there yet, so nothing records these inserts, and only the install's baseline can show them.
    """
    with _as(dsn) as conn:
        row = conn.execute(
            "INSERT INTO customers (name, email, address) VALUES "
            "('Ada Lovelace', 'ada@example.com', 'Prinsengracht 7'), "
            "('Alan Turing', 'alan@example.com', 'Herengracht 3') RETURNING id"
        ).fetchall()
        booking = conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price, status) VALUES "
            "(%s, 'Boiler service', 'Prinsengracht 7', 95.00, 'requested'), "
            "(%s, 'Gutter cleaning', 'Herengracht 3', 60.00, 'requested') RETURNING id",
            (row[0][0], row[1][0]),
        ).fetchall()
        existing = int(str(booking[0][0]))
    say(f"last week: Ada Lovelace's booking {existing} (boiler service, 95.00) and one more")
    return existing


def reschedule_existing(dsn: str, booking_id: int, say: Callable[[str], None]) -> None:
    """The day also touches a booking that predates the audit."""
    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('dana', role => 'dispatcher', request_id => 'req-5007')"
        )
        conn.execute(
            "UPDATE bookings SET scheduled_start = '2026-11-28 13:00+01', "
            "scheduled_end = '2026-11-28 14:00+01', status = 'scheduled', updated_at = now() "
            "WHERE id = %s",
            (booking_id,),
        )
    say(f"19:00 dana schedules the older booking {booking_id} for Saturday 13:00-14:00")


def play_day(dsn: str, say: Callable[[str], None], *, psql_dsn: str | None = None) -> int:
    """Returns the id of the booking the day revolves around.

    `dsn` is the application's login; the evening's raw edit in psql comes from `psql_dsn`
    (someone with a login of their own, such as the DBA), the application's when not given.
    """
    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('dana', role => 'dispatcher', request_id => 'req-5001')"
        )
        row = conn.execute(
            "INSERT INTO customers (name, email, phone, address) VALUES "
            "('Grace Hopper', 'grace@example.com', '+31 20 555 0101', 'Keizersgracht 12') RETURNING id"
        ).fetchone()
        assert row is not None
        booking = conn.execute(
            "INSERT INTO bookings (customer_id, service, address, price) "
            "VALUES (%s, 'Annual HVAC maintenance', 'Keizersgracht 12', 149.00) RETURNING id",
            (row[0],),
        ).fetchone()
        assert booking is not None
        booking_id = int(str(booking[0]))
    say(f"08:05 dana (dispatcher) creates booking {booking_id} for Grace Hopper at 149.00")

    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('dana', role => 'dispatcher', request_id => 'req-5002')"
        )
        conn.execute(
            "UPDATE bookings SET scheduled_start = '2026-11-27 09:00+01', "
            "scheduled_end = '2026-11-27 11:00+01', status = 'scheduled', updated_at = now() "
            "WHERE id = %s",
            (booking_id,),
        )
        conn.execute(
            "INSERT INTO assignments (booking_id, fieldworker) VALUES (%s, 'finn')", (booking_id,)
        )
    say("08:10 dana schedules it for tomorrow 09:00-11:00 and assigns finn")

    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('alice', role => 'admin', reason => 'second unit on site', "
            "approval_ref => 'APR-1042', request_id => 'req-5003')"
        )
        conn.execute(
            "UPDATE bookings SET price = 189.50, updated_at = now() WHERE id = %s", (booking_id,)
        )
    say("09:30 alice (admin) raises the price 149.00 -> 189.50, approval APR-1042")

    with _as(dsn, "fieldworker-app") as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('finn', role => 'fieldworker', request_id => 'req-5004')"
        )
        conn.execute(
            "UPDATE bookings SET status = 'in_progress', updated_at = now() WHERE id = %s",
            (booking_id,),
        )
        conn.execute(
            "INSERT INTO notes (booking_id, author, body) VALUES "
            "(%s, 'finn', 'Replaced filter on both units; condensate pump noisy.')",
            (booking_id,),
        )
        conn.execute(
            "UPDATE bookings SET status = 'completed', updated_at = now() WHERE id = %s",
            (booking_id,),
        )
    say("11:05 finn (fieldworker) starts, notes the work, and completes the job")

    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('olga', role => 'billing', request_id => 'req-5005')"
        )
        conn.execute(
            "INSERT INTO invoices (booking_id, number, amount, status, sent_at) "
            "VALUES (%s, 'INV-' || %s, 189.50, 'sent', now())",
            (booking_id, booking_id),
        )
    say("14:00 olga (billing) sends the invoice for 189.50")

    with _as(dsn) as conn:
        conn.execute(
            "SELECT bookaudit.set_actor('olga', role => 'billing', request_id => 'req-5006')"
        )
        conn.execute(
            "INSERT INTO payments (booking_id, invoice_id, amount, method) "
            "SELECT booking_id, id, amount, 'card' FROM invoices WHERE booking_id = %s",
            (booking_id,),
        )
        conn.execute("UPDATE invoices SET status = 'paid' WHERE booking_id = %s", (booking_id,))
    say("16:20 olga records the card payment and marks the invoice paid")

    with _as(psql_dsn or dsn, "psql") as conn:
        conn.execute("UPDATE bookings SET price = 169.50 WHERE id = %s", (booking_id,))
    say("18:45 someone runs raw SQL in psql: price 189.50 -> 169.50, no actor set")
    return booking_id
