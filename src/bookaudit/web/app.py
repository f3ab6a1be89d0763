"""The pages: a booking's timeline (as-of, diff, evidence), a customer's, the log, an actor, alerts."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask, Response, redirect, render_template, request

from bookaudit.errors import BookauditError
from bookaudit.warehouse import history as h
from bookaudit.warehouse._connect import warehouse
from bookaudit.warehouse.alerts import ALERT_KEYS, list_alerts
from bookaudit.warehouse.gaps import list_gaps
from bookaudit.web.serve import ServeSettings


def _filters(
    args: Mapping[str, str], source: str | None, *, day_default: bool = False
) -> h.Filters:
    """The same options as the history commands, from the query string."""
    zone = h.parse_zone(args.get("tz") or None)
    since_text = args.get("since") or None
    until_text = args.get("until") or None
    if day_default and not since_text:
        since_text = datetime.now(zone).date().isoformat()
        until_text = until_text or since_text
    return h.Filters(
        since=h.parse_moment(since_text, zone, "since") if since_text else None,
        until=h.parse_moment(until_text, zone, "until", end_of_day=True) if until_text else None,
        fields=tuple(v for v in request.args.getlist("field") if v),
        actors=tuple(v for v in request.args.getlist("actor") if v),
        labels=tuple(v for v in request.args.getlist("label") if v),
        source=args.get("source") or source,
        zone=zone,
    )


def _csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], name: str) -> Response:
    return Response(
        h.render_csv(rows, keys) + "\n",
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


def _entries_view(rows: list[dict[str, Any]], zone: tzinfo) -> list[dict[str, Any]]:
    return [
        {
            "entry": e,
            "when": h.show_time(e.committed_at, zone),
            "changes": [
                (c.field, h.show_value(c.old, zone), h.show_value(c.new, zone))
                for c in e.shown_changes
            ],
        }
        for e in h.entries(rows)
    ]


def create_app(settings: ServeSettings) -> Flask:
    app = Flask(__name__)  # Jinja autoescape is on for .html templates: values cannot inject HTML
    dsn = settings.reader_dsn

    @app.before_request
    def authenticate() -> Response | None:
        if not (settings.token or settings.user):
            return None
        header = request.headers.get("Authorization", "")
        if settings.token and hmac.compare_digest(header, f"Bearer {settings.token}"):
            return None
        if settings.user and settings.password and header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if hmac.compare_digest(user, settings.user) and hmac.compare_digest(
                password, str(settings.password)
            ):
                return None
        return Response(
            "credentials required\n", 401, {"WWW-Authenticate": 'Basic realm="bookaudit"'}
        )

    @app.errorhandler(BookauditError)
    def bad_input(exc: BookauditError) -> tuple[str, int]:
        return render_template("error.html", message=str(exc)), 400

    @app.context_processor
    def common() -> dict[str, Any]:
        # Every page says where the audit is incomplete (an accepted lost-slot gap).
        gaps = list_gaps(dsn, request.args.get("source") or settings.source)
        return {"printing": request.args.get("print") == "1", "args": request.args, "gaps": gaps}

    @app.template_filter("urlencode_multi")
    def urlencode_multi(params: dict[str, list[str]], **replace: str) -> str:
        """This page's query string with `replace` set: the CSV and print links keep filters."""
        kept = {
            k: v for k, v in params.items() if k not in replace and k not in ("format", "print")
        }
        return urlencode({**kept, **{k: [v] for k, v in replace.items()}}, doseq=True)

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.get("/go")
    def go() -> Any:
        for kind, path in (("booking", "bookings"), ("customer", "customers"), ("actor", "actors")):
            value = request.args.get(kind, "").strip()
            if value:
                return redirect(f"/{path}/{quote(value, safe='')}")
        return redirect("/")

    @app.get("/bookings/<booking_id>")
    def booking(booking_id: str) -> Response | str:
        f = _filters(request.args, settings.source)
        as_of = request.args.get("as_of") or None
        t1, t2 = request.args.get("t1") or None, request.args.get("t2") or None
        if as_of:
            at = h.parse_moment(as_of, f.zone, "as_of")
            state = h.as_of_rows(dsn, booking_id, at, f.source)
            if request.args.get("format") == "csv":
                return _csv(
                    h.exported(state, h.AS_OF_KEYS, f.zone),
                    h.AS_OF_KEYS,
                    f"booking-{booking_id}-as-of",
                )
            shown = [{**r, "shown": h.show_value(r["value"], f.zone)} for r in state]
            return render_template(
                "as_of.html", booking_id=booking_id, rows=shown, at=h.show_time(at, f.zone)
            )
        if t1 and t2:
            m1, m2 = h.parse_moment(t1, f.zone, "t1"), h.parse_moment(t2, f.zone, "t2")
            changed = h.diff_rows(dsn, booking_id, m1, m2, f.source)
            if request.args.get("format") == "csv":
                return _csv(
                    h.exported(changed, h.DIFF_KEYS, f.zone),
                    h.DIFF_KEYS,
                    f"booking-{booking_id}-diff",
                )
            shown = [
                {**r, "a": h.show_value(r["at_t1"], f.zone), "b": h.show_value(r["at_t2"], f.zone)}
                for r in changed
            ]
            return render_template(
                "diff.html", booking_id=booking_id, rows=shown,
                t1=h.show_time(m1, f.zone), t2=h.show_time(m2, f.zone),
            )  # fmt: skip
        rows = h.booking_rows(dsn, booking_id, f)
        if request.args.get("format") == "csv":
            keys = h.BOOKING_EXPORT_KEYS
            return _csv(h.exported(rows, keys, f.zone), keys, f"booking-{booking_id}")
        return render_template(
            "timeline.html", title=f"Booking {booking_id}", booking_id=booking_id,
            entries=_entries_view(rows, f.zone), with_booking=False,
        )  # fmt: skip

    @app.get("/bookings/<booking_id>/evidence")
    def evidence(booking_id: str) -> str:
        f = _filters(request.args, settings.source)
        rows = h.booking_rows(dsn, booking_id, f)
        items = _entries_view(rows, f.zone)
        with warehouse(dsn) as conn:
            links = {
                r["change_id"]: r
                for r in conn.execute(
                    # Each row's leaf hash, and the hash of the link (batch) that chains it.
                    "SELECT c.change_id, c.position, encode(c.leaf, 'hex') AS leaf, "
                    "encode(l.hash, 'hex') AS hash FROM audit.chain c "
                    "JOIN audit.chain_links l USING (position) WHERE c.change_id = ANY(%s)",
                    ([i["entry"].change_id for i in items],),
                )
            }
            head = conn.execute(
                "SELECT position, encode(hash, 'hex') AS hash FROM audit.chain_links "
                "ORDER BY position DESC LIMIT 1"
            ).fetchone()
        return render_template(
            "evidence.html", booking_id=booking_id, entries=items, links=links, head=head,
            printed=h.show_time(datetime.now(f.zone), f.zone),
        )  # fmt: skip

    @app.get("/customers/<customer_id>")
    def customer(customer_id: str) -> Response | str:
        f = _filters(request.args, settings.source)
        rows = h.customer_rows(dsn, customer_id, f)
        if request.args.get("format") == "csv":
            keys = h.CUSTOMER_EXPORT_KEYS
            return _csv(h.exported(rows, keys, f.zone), keys, f"customer-{customer_id}")
        for r in rows:
            r.setdefault("booking_id", r.get("booking"))
        return render_template(
            "timeline.html", title=f"Customer {customer_id}", booking_id=None,
            entries=_entries_view(rows, f.zone), with_booking=True,
        )  # fmt: skip

    @app.get("/actors/<name>")
    def actor(name: str) -> Response | str:
        f = _filters(request.args, settings.source)
        rows = h.actor_rows(dsn, name, f)
        if request.args.get("format") == "csv":
            keys = h.ACTOR_EXPORT_KEYS
            return _csv(h.exported(rows, keys, f.zone), keys, f"actor-{name}")
        return render_template(
            "timeline.html", title=f"Activity of {name}", booking_id=None,
            entries=_entries_view(rows, f.zone), with_booking=True,
        )  # fmt: skip

    @app.get("/log")
    def daily_log() -> Response | str:
        f = _filters(request.args, settings.source, day_default=True)
        rows = h.log_rows(dsn, f)
        counts, totals = h.booking_counts(rows), h.actor_totals(rows)
        if request.args.get("format") == "csv":
            return _csv(h.exported(rows, h.LOG_KEYS, f.zone), h.LOG_KEYS, "booking-history-log")
        return render_template(
            "log.html", rows=h.log_table_rows(rows, f.zone), counts=counts, totals=totals,
            count_keys=h.COUNT_KEYS, total_keys=h.TOTAL_KEYS, period=h.describe_period(f),
        )  # fmt: skip

    @app.get("/alerts")
    def alerts() -> Response | str:
        f = _filters(request.args, settings.source)
        found = list_alerts(
            dsn, since=f.since, booking=request.args.get("booking") or None,
            rule=request.args.get("rule") or None, source=f.source,
        )  # fmt: skip
        shown = [
            {
                **{k: r[k] for k in ALERT_KEYS},
                "committed_at": h.show_time(r["committed_at"], f.zone),
                "message": r["message"],
            }
            for r in found
        ]
        if request.args.get("format") == "csv":
            return _csv(shown, (*ALERT_KEYS, "message"), "alerts")
        return render_template("alerts.html", rows=shown, keys=ALERT_KEYS)

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app
