"""The application helpers on the real stack: psycopg's acting_as, and the documented snippets,
on the sample schema and on one that shares none of its names."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bookaudit.actor import Actor, ActorError, acting_as
from tests.integration.harness import Pipeline

DOC = Path(__file__).resolve().parents[2] / "docs" / "application-actor.md"


# The status a seeded booking starts with, by schema (each table's column default).
_NEW = {"sample": "requested", "jobs": "open"}


def _updates(p: Pipeline) -> list[tuple[Any, ...]]:
    """Each update's new price and status, with who the warehouse says made it."""
    fields = p.schema.entity_map.booking.fields
    return p.warehouse(
        "SELECT after ->> %s, after ->> %s, actor, actor_role, request_id, application, "
        "actor_origin FROM audit.row_changes WHERE action = 'update' ORDER BY commit_lsn, sequence",
        (fields.price[0], fields.status[0]),
    )


def _snippet(name: str) -> dict[str, Any]:
    """Run the code block the doc marks `<!-- snippet: name -->`, exactly as a reader copies it."""
    text = DOC.read_text()
    marker = f"<!-- snippet: {name} -->\n```python\n"
    start = text.index(marker) + len(marker)
    code = text[start : text.index("```", start)]
    namespace: dict[str, Any] = {"__name__": f"snippet_{name}"}
    exec(compile(code, f"{DOC}#{name}", "exec"), namespace)
    return namespace


def test_acting_as_attributes_one_transaction_and_commits_it(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    w = p.schema.writes
    [booking] = p.seed()
    with p.source(application_name="psycopg-app") as conn:
        conn.autocommit = True
        with acting_as(conn, "alice", role="admin", approval_ref="APR-1", request_id="r-1"):
            conn.execute(w.price, {"booking": booking, "price": "189.50"})
        with acting_as(conn, Actor("finn", role="fieldworker")):
            conn.execute(w.status, {"booking": booking, "status": "completed"})
        with pytest.raises(ZeroDivisionError), acting_as(conn, "mallory"):
            conn.execute(w.price, {"booking": booking, "price": "1.00"})
            raise ZeroDivisionError
        # The actor ended with its transaction: this change is the session's, not finn's.
        conn.execute(w.status, {"booking": booking, "status": "closed"})
    p.flow()

    start = _NEW[p.schema.name]
    assert _updates(p) == [
        ("189.50", start, "alice", "admin", "r-1", "psycopg-app", "application"),
        ("189.50", "completed", "finn", "fieldworker", None, "psycopg-app", "application"),
        ("189.50", "closed", None, None, None, "psycopg-app", "db_session"),
    ]


def test_acting_as_refuses_a_transaction_it_does_not_own_and_an_empty_actor(
    pipeline: Pipeline,
) -> None:
    with pipeline.source() as conn:
        conn.execute("SELECT 1")  # the connection is now inside a transaction
        with pytest.raises(ActorError, match="already in one"), acting_as(conn, "alice"):
            pass
        conn.rollback()
        with pytest.raises(ActorError, match="non-empty"), acting_as(conn, " "):
            pass
        with (
            pytest.raises(ActorError, match="in the Actor"),
            acting_as(conn, Actor("bob"), role="admin"),
        ):
            pass


class _Base(DeclarativeBase):
    pass


class _Bookable(_Base):
    """What the test edits, whatever the schema calls it."""

    __abstract__ = True
    price: Mapped[Decimal]
    status: Mapped[str]


class Booking(_Bookable):
    """The sample schema's bookings, as an ORM application maps them."""

    __tablename__ = "bookings"
    id: Mapped[int] = mapped_column(primary_key=True)


class Job(_Bookable):
    """The jobs schema's jobs, under the attribute names a Booking has."""

    __tablename__ = "jobs"
    __table_args__ = ({"schema": "ops"},)
    id: Mapped[str] = mapped_column("job_no", primary_key=True)
    price: Mapped[Decimal] = mapped_column("quoted_total")
    status: Mapped[str] = mapped_column("state")


_ORM: dict[str, type[_Bookable]] = {"sample": Booking, "jobs": Job}


def _sqlalchemy_url(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return URL.create(
        "postgresql+psycopg",
        username=str(params.get("user") or "") or None,
        password=str(params.get("password") or "") or None,
        host=str(params.get("host") or "") or None,
        port=int(str(params["port"])) if params.get("port") else None,
        database=str(params["dbname"]),
    ).render_as_string(hide_password=False)


def test_sqlalchemy_snippet_names_the_request_user_in_every_transaction(
    schema_pipeline: Pipeline,
) -> None:
    p = schema_pipeline
    [booking] = p.seed()
    mapped = _ORM[p.schema.name]
    snippet = _snippet("sqlalchemy")
    engine = create_engine(_sqlalchemy_url(p.app_dsn), connect_args={"application_name": "sa-app"})
    try:
        token = snippet["current_actor"].set(
            {"id": "sam", "role": "dispatcher", "request_id": "req-sa"}
        )
        with Session(engine) as session:
            row = session.get(mapped, booking)
            assert row is not None
            row.price = Decimal("111.10")
            session.commit()
            row.status = "scheduled"  # a second transaction of the same request
            session.commit()
        snippet["current_actor"].reset(token)
        with Session(engine) as session:  # no request user: a job, a shell
            row = session.get(mapped, booking)
            assert row is not None
            row.status = "confirmed"
            session.commit()
    finally:
        event.remove(Session, "after_begin", snippet["name_the_actor"])
        engine.dispose()
    p.flow()

    assert _updates(p) == [
        ("111.10", _NEW[p.schema.name], "sam", "dispatcher", "req-sa", "sa-app", "application"),
        ("111.10", "scheduled", "sam", "dispatcher", "req-sa", "sa-app", "application"),
        ("111.10", "confirmed", None, None, None, "sa-app", "db_session"),
    ]


@dataclass
class _User:
    """Django's user protocol as the middleware reads it."""

    username: str
    role: str | None = None
    is_authenticated: bool = True

    def get_username(self) -> str:
        return self.username


def _configure_django(dsn: str) -> None:
    import django
    from django.conf import settings
    from django.db import connections

    params = conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": str(params["dbname"]),
        "USER": str(params.get("user") or ""),
        "PASSWORD": str(params.get("password") or ""),
        "HOST": str(params.get("host") or ""),
        "PORT": str(params.get("port") or ""),
        "OPTIONS": {"application_name": "django-app"},
    }
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    else:
        # Settings configure once per process; later tests point the connection elsewhere.
        connections["default"].close()
        connections["default"].settings_dict.update(database)


def test_django_middleware_snippet_names_the_request_user(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    w, n = p.schema.writes, p.schema.names
    [booking] = p.seed()
    snippet = _snippet("django")
    _configure_django(p.app_dsn)
    from django.db import connection, connections, transaction
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory

    def edit(request: HttpRequest) -> HttpResponse:
        with connection.cursor() as cursor:  # autocommit: one statement, one transaction
            cursor.execute(w.price, {"booking": booking, "price": "120.00"})
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(w.status, {"booking": booking, "status": "scheduled"})
            cursor.execute(w.note, {"booking": booking, "body": "moved"})
        return HttpResponse("ok")

    def confirm(request: HttpRequest) -> HttpResponse:
        with connection.cursor() as cursor:
            cursor.execute(w.status, {"booking": booking, "status": "confirmed"})
        return HttpResponse("ok")

    factory = RequestFactory()
    signed_in = factory.post("/bookings", headers={"X-Request-ID": "req-dj"})
    signed_in.user = _User("dj", role="dispatcher")  # type: ignore[assignment]
    anonymous = factory.post("/bookings")
    anonymous.user = _User("", is_authenticated=False)  # type: ignore[assignment]
    try:
        assert snippet["AuditActorMiddleware"](edit)(signed_in).status_code == 200
        assert snippet["AuditActorMiddleware"](confirm)(anonymous).status_code == 200
    finally:
        connections.close_all()
    p.flow()

    assert _updates(p) == [
        ("120.00", _NEW[p.schema.name], "dj", "dispatcher", "req-dj", "django-app", "application"),
        ("120.00", "scheduled", "dj", "dispatcher", "req-dj", "django-app", "application"),
        ("120.00", "confirmed", None, None, None, "django-app", "db_session"),
    ]
    note = p.warehouse(
        "SELECT actor, request_id FROM audit.row_changes WHERE table_name = %s", (n["notes"],)
    )
    assert note == [("dj", "req-dj")]
    one_each = p.warehouse("SELECT count(DISTINCT txid) FROM audit.row_changes WHERE actor = 'dj'")
    assert one_each == [(2,)]  # the autocommit UPDATE, then the atomic block


def test_psycopg_connection_type_is_what_the_django_snippet_expects(pipeline: Pipeline) -> None:
    """The Django snippet reaches under Django's wrapper for psycopg's transaction status."""
    _configure_django(pipeline.app_dsn)
    from django.db import connections

    try:
        connections["default"].ensure_connection()
        assert isinstance(connections["default"].connection, psycopg.Connection)
    finally:
        connections.close_all()
