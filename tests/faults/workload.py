"""The campaign's workload: mixed application transactions that record their own ground truth.

Every change sets the row's `rev` from one sequence and, in the same statement, adds
(table, op, rev) to `fc_truth`, an unaudited table: what committed is exactly what the truth
table holds, whatever crashed around the commit.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

TRUTH_TABLES = ("customers", "bookings", "invoices", "notes")

SETUP = """
CREATE SEQUENCE fc_rev;
CREATE TABLE fc_truth (tbl text NOT NULL, op "char" NOT NULL, rev bigint NOT NULL,
                       PRIMARY KEY (tbl, op, rev));
ALTER TABLE customers ADD COLUMN rev bigint;
ALTER TABLE bookings ADD COLUMN rev bigint;
ALTER TABLE invoices ADD COLUMN rev bigint;
ALTER TABLE notes ADD COLUMN rev bigint;
"""


def grants(role: str) -> str:
    """What an application role gets: table privileges, nothing owned."""
    return (
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"; '
        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"'
    )


def _truth(table: str, op: str, statement: str) -> str:
    return (
        f"WITH w AS ({statement} RETURNING rev) "
        f"INSERT INTO fc_truth (tbl, op, rev) SELECT '{table}', '{op}', rev FROM w"
    )


NEW_CUSTOMER = _truth(
    "customers", "c",
    "INSERT INTO customers (name, email, rev) VALUES (%(name)s, %(name)s || '@example.com', "
    "nextval('fc_rev'))",
)  # fmt: skip
NEW_BOOKINGS = _truth(
    "bookings", "c",
    "INSERT INTO bookings (customer_id, service, address, price, rev) "
    "SELECT (SELECT max(id) FROM customers), 'Boiler check', 'Elm St ' || g, 80 + g, "
    "nextval('fc_rev') FROM generate_series(1, %(n)s) g",
)  # fmt: skip
REPRICE = _truth(
    "bookings", "u",
    "UPDATE bookings SET price = price + 1.25, updated_at = now(), rev = nextval('fc_rev') "
    "WHERE id BETWEEN %(lo)s AND %(lo)s + %(n)s - 1",
)  # fmt: skip
RESCHEDULE = _truth(
    "bookings", "u",
    "UPDATE bookings SET status = 'scheduled', scheduled_start = now() + interval '1 day', "
    "rev = nextval('fc_rev') WHERE id BETWEEN %(lo)s AND %(lo)s + %(n)s - 1",
)  # fmt: skip
INVOICE = _truth(
    "invoices", "c",
    "INSERT INTO invoices (booking_id, number, amount, rev) "
    "SELECT id, 'INV-' || %(src)s || '-' || nextval('fc_rev'), price, nextval('fc_rev') "
    "FROM bookings WHERE id BETWEEN %(lo)s AND %(lo)s + %(n)s - 1",
)  # fmt: skip
REINVOICE = _truth(
    "invoices", "u",
    "UPDATE invoices SET amount = amount + 0.10, status = 'issued', rev = nextval('fc_rev') "
    "WHERE booking_id BETWEEN %(lo)s AND %(lo)s + %(n)s - 1",
)  # fmt: skip
NOTE = _truth(
    "notes", "c",
    "INSERT INTO notes (booking_id, author, body, rev) SELECT id, %(name)s, "
    "'called the customer ' || %(name)s, nextval('fc_rev') FROM bookings "
    "WHERE id BETWEEN %(lo)s AND %(lo)s + %(n)s - 1",
)  # fmt: skip
FORGET_NOTES = _truth(
    "notes", "d",
    "DELETE FROM notes WHERE booking_id BETWEEN %(lo)s AND %(lo)s + %(n)s - 1",
)  # fmt: skip
PROBE = _truth(
    "bookings", "u",
    "UPDATE bookings SET price = price + 0.01, rev = nextval('fc_rev') "
    "WHERE id = (SELECT min(id) FROM bookings)",
)  # fmt: skip


@dataclass
class Workload:
    """Writes to every source in turn at about `rate` changes per second until stopped."""

    dsns: dict[str, str]  # source name -> DSN of the application role
    rate: float
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    statements: int = 0
    reconnects: int = 0
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        conns: dict[str, psycopg.Connection[Any]] = {}
        started = time.monotonic()
        rows = 0
        while not self.stop.is_set():
            for name, dsn in self.dsns.items():
                try:
                    conn = conns.get(name)
                    if conn is None or conn.closed:
                        conn = conns[name] = psycopg.connect(dsn, application_name="fc-app")
                    rows += self._transaction(conn, rnd, name)
                except psycopg.OperationalError:
                    # The source restarted under us: whatever committed is in fc_truth.
                    self.reconnects += 1
                    old = conns.pop(name, None)
                    if old is not None:
                        old.close()
                    self.stop.wait(0.5)
            ahead = rows / self.rate - (time.monotonic() - started)
            if ahead > 0:
                self.stop.wait(ahead)
        for conn in conns.values():
            conn.close()

    def _transaction(self, conn: psycopg.Connection[Any], rnd: random.Random, src: str) -> int:
        """One application transaction of 1 to ~40 changes; returns how many it asked for."""
        top = conn.execute("SELECT coalesce(max(id), 0) FROM bookings").fetchone()
        bookings = int(top[0]) if top else 0
        lo = rnd.randint(1, max(1, bookings - 10))
        n = rnd.choice((1, 1, 1, 2, 3, 5, 10, 20))
        name = f"u{rnd.randint(1, 50)}"
        params = {"lo": lo, "n": n, "name": name, "src": src}
        kind = rnd.random()
        if bookings < 20 or kind < 0.15:
            conn.execute("SELECT bookaudit.set_actor(%s, role => 'dispatcher')", (name,))
            conn.execute(NEW_CUSTOMER, params)
            conn.execute(NEW_BOOKINGS, params)
            planned = 1 + n
        elif kind < 0.40:
            # Approved price changes by an admin: no alert rule fires on them.
            conn.execute(
                "SELECT bookaudit.set_actor(%s, role => 'admin', approval_ref => 'APR-1')", (name,)
            )
            conn.execute(REPRICE, params)
            planned = n
        elif kind < 0.55:
            conn.execute("SELECT bookaudit.set_actor(%s, role => 'dispatcher')", (name,))
            conn.execute(RESCHEDULE, params)
            conn.execute(NOTE, params)
            planned = 2 * n
        elif kind < 0.75:
            conn.execute("SELECT bookaudit.set_actor(%s, role => 'billing')", (name,))
            conn.execute(INVOICE, params)
            conn.execute(REINVOICE, params)
            planned = 2 * n
        elif kind < 0.90:
            conn.execute(NOTE, params)  # no actor set: attributed to the db session
            planned = n
        else:
            conn.execute("SELECT bookaudit.set_actor(%s, role => 'dispatcher')", (name,))
            conn.execute(FORGET_NOTES, params)
            planned = n
        conn.commit()
        self.statements += 1
        return planned


def probe(dsn: str, actor: str) -> None:
    """One price change by a role no rule allows: it must reach the warehouse and raise exactly
    one alert (price-by-unauthorised-role) however the pipeline was disturbed."""
    with psycopg.connect(dsn, application_name="fc-probe") as conn:
        conn.execute("SELECT bookaudit.set_actor(%s, role => 'fault-probe')", (actor,))
        conn.execute(PROBE)
