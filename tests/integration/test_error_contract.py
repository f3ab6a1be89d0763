"""The edges keep the error contract: library errors become transient (retry) or terminal (one
line) by their codes; a webhook's 4xx parks an alert while 5xx and timeouts are retried; an
unreachable service is never mistaken for an idle one; secrets stay out of logs and tables."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from bookaudit.cdc.capture import Capture
from bookaudit.consumers import _kafka
from bookaudit.consumers._kafka import ConsumerSettings
from bookaudit.consumers.audit.job import AuditWriter
from bookaudit.consumers.audit.writer import WarehouseWriter
from bookaudit.errors import TerminalError, TransientError
from bookaudit.kafka import producer
from devstack import StackEnv
from tests.integration.harness import Pipeline, wait_for
from tests.integration.schemas import Schema
from tests.integration.workloads import seed_bookings, unapproved_edits

TOKEN = "Xq7TOKENzz91secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PickyWebhook:
    """Refuses the first alert for good (404), keeps the second waiting past the client's
    timeout once, answers the third 503 once; accepts everything else."""

    def __init__(self, port: int) -> None:
        self.order: list[str] = []
        self.answers: list[tuple[str, int]] = []
        self.arrivals: Counter[str] = Counter()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body: dict[str, Any] = json.loads(
                    self.rfile.read(int(self.headers["Content-Length"]))
                )
                alert = str(body["alert_id"])
                if alert not in hook.order:
                    hook.order.append(alert)
                rank = hook.order.index(alert)
                tries = hook.arrivals[alert]
                hook.arrivals[alert] += 1
                status = 200
                if rank == 0:
                    status = 404
                elif rank == 1 and tries == 0:
                    time.sleep(6.5)  # past the 5 s client timeout
                    status = 599  # never read by the client
                elif rank == 2 and tries == 0:
                    status = 503
                hook.answers.append((alert, status))
                try:
                    self.send_response(200 if status == 599 else status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: `answers` is the record."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @contextmanager
    def listening(self) -> Iterator[PickyWebhook]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def logical(stack: StackEnv) -> Iterator[Pipeline]:
    """For the unreachable-service tests, which write no audited data."""
    p = Pipeline(stack, mode="logical").create()
    yield p
    p.drop()


@pytest.fixture
def alerting(stack: StackEnv, schema: Schema) -> Iterator[Pipeline]:
    """Alerts read what the writer stored, whatever the capture mode: logical, on each schema
    (its map says which column is the price)."""
    p = Pipeline(stack, mode="logical", schema=schema).create()
    yield p
    p.drop()


@pytest.mark.slow
def test_webhook_4xx_parks_5xx_and_timeout_retry_and_the_token_stays_hidden(
    alerting: Pipeline,
) -> None:
    p = alerting
    url = f"http://127.0.0.1:{free_port()}/services/T0AAA/B0BBB/{TOKEN}"
    unapproved_edits(p, seed_bookings(p, 3), 1)
    p.capture()
    hook = PickyWebhook(int(url.split(":")[2].split("/")[0]))
    with hook.listening():
        run = p.cli("consume", "alerts", "--webhook", url, "--exit-when-idle", "--no-stdout")
        again = p.cli("consume", "alerts", "--webhook", url, "--exit-when-idle", "--no-stdout")
    parked, slow, flaky = hook.order
    assert Counter(a for a, _ in hook.answers) == {parked: 1, slow: 2, flaky: 2}
    assert "parked" in run.stderr and "404" in run.stderr
    assert "retry in" in run.stderr  # the timeout and the 503 were retried, with backoff
    for output in (run.stderr, again.stderr):
        assert TOKEN not in output and "T0AAA" not in output

    deliveries = p.warehouse(
        "SELECT a.alert_id, d.http_status, d.target FROM audit.alert_deliveries d "
        "JOIN audit.alerts a ON a.id = d.alert WHERE d.channel = 'webhook'"
    )
    assert {(a, s) for a, s, _ in deliveries} == {(parked, 404), (slow, 200), (flaky, 200)}
    assert all(TOKEN not in t and "T0AAA" not in t for _, _, t in deliveries)

    listed = json.loads(p.cli("alerts", "list", "--format", "json").stdout)
    assert {a["alert_id"]: a["webhook"] for a in listed} == {
        parked: "parked 404",
        slow: "sent",
        flaky: "sent",
    }
    assert "parked 404" in p.cli("alerts", "list").stdout


def test_unreachable_kafka_at_start_is_transient_not_idle(
    logical: Pipeline, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`consume audit --exit-when-idle` used to print "done, 0 entries" and exit 0, and the
    capture died after 60 s with a TimeoutError and a flood of raw librdkafka lines."""
    monkeypatch.setattr(_kafka, "CONNECT_TIMEOUT_S", 2.0)
    monkeypatch.setattr(producer, "ADMIN_TIMEOUT_S", 2.0)
    nowhere = f"127.0.0.1:{free_port()}"
    settings = ConsumerSettings(bootstrap=nowhere, group_id=p_group(logical), topic_prefix="x")
    said: list[str] = []
    with pytest.raises(TransientError, match="unreachable"):
        AuditWriter(settings, logical.warehouse_dsn, said.append).run(exit_when_idle=True)
    assert not any("done" in line for line in said)

    capture_settings = logical.capture_settings()
    bad = type(capture_settings)(**{**capture_settings.__dict__, "kafka_bootstrap": nowhere})
    with pytest.raises(TransientError, match="unreachable"):
        Capture(bad, logical.logs.append).run()
    # librdkafka's lines go to the logging handler, not straight to stderr.
    assert "|FAIL|" not in capfd.readouterr().err


def p_group(p: Pipeline) -> str:
    return f"{p.name}-unreachable"


def test_source_unreachable_retries_but_a_refused_login_stops(stack: StackEnv) -> None:
    capture_settings = Pipeline(stack).capture_settings()
    down = make_conninfo(stack.admin_dsn, port=free_port())
    with pytest.raises(TransientError, match="cannot connect to the source"):
        Capture(type(capture_settings)(**{**capture_settings.__dict__, "source_dsn": down}), print)
    missing = make_conninfo(stack.admin_dsn, dbname="no_such_db_for_bookaudit")
    with pytest.raises(TerminalError, match="no_such_db_for_bookaudit"):
        Capture(
            type(capture_settings)(**{**capture_settings.__dict__, "source_dsn": missing}), print
        )


@pytest.mark.slow
def test_capture_against_unreachable_kafka_retries_with_backoff_in_one_line_each(
    logical: Pipeline,
) -> None:
    """It used to die after 60 s with a TimeoutError traceback and ~1,400 raw librdkafka lines."""
    nowhere = f"127.0.0.1:{free_port()}"
    log = logical.spawn_log("capture")
    with logical.running("capture", "--kafka-bootstrap", nowhere) as capture:
        # Unreachable is only told from slow by the 60 s metadata timeout.
        wait_for("a retry", lambda: "(retry 1 in" in log.read_text(), timeout=180)
        assert capture.poll() is None, "an unreachable broker is transient: keep retrying"
    text = log.read_text()
    assert "Traceback" not in text and "TimeoutError" not in text
    retries = [line for line in text.splitlines() if "(retry" in line]
    assert retries[0].startswith(f"bookaudit: Kafka at {nowhere} is unreachable")
    # librdkafka's own lines come through logging, each shape once a minute at most.
    assert len(text.splitlines()) < 20, text


def test_warehouse_down_retries_but_a_missing_database_stops(stack: StackEnv) -> None:
    with pytest.raises(TransientError, match="cannot connect to the warehouse"):
        WarehouseWriter(make_conninfo(stack.admin_dsn, port=free_port()))
    with pytest.raises(TerminalError, match="no_such_warehouse_for_bookaudit"):
        WarehouseWriter(make_conninfo(stack.admin_dsn, dbname="no_such_warehouse_for_bookaudit"))
