"""kill -9 of the alerts consumer mid-stream, and a webhook that is down: nothing lost, no repeat."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.harness import Pipeline
from tests.integration.workloads import alert_ids_on_topic, seed_bookings, unapproved_edits

pytestmark = pytest.mark.slow

BOOKINGS = 200
ROUNDS = 15  # unapproved price edits per booking: 3000 alerts


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def count(p: Pipeline, query: str) -> int:
    return int(p.warehouse(query)[0][0])


def test_consumer_killed_mid_stream_restarts_with_no_duplicate_and_no_miss(
    schema_pipeline: Pipeline,
) -> None:
    pipeline = schema_pipeline
    expected = BOOKINGS * ROUNDS
    unapproved_edits(pipeline, seed_bookings(pipeline, BOOKINGS), ROUNDS)
    pipeline.capture()
    with pipeline.running("consume", "alerts", "--batch-size", "50", "--no-stdout") as consumer:
        wait_for(
            "600 alerts recorded",
            lambda: count(pipeline, "SELECT count(*) FROM audit.alerts") >= 600,
        )
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=10)
    at_kill = count(pipeline, "SELECT count(*) FROM audit.alerts")
    assert consumer.returncode == -signal.SIGKILL
    assert at_kill < expected, "the kill came after the consumer had finished"

    stats = pipeline.alerts()
    assert stats.alerts == expected - at_kill
    rows = pipeline.warehouse(
        "SELECT count(*), count(DISTINCT (source, commit_lsn, sequence)), count(DISTINCT rule) "
        "FROM audit.alerts"
    )
    assert rows == [(expected, expected, 1)]
    # Every change raised its alert: the audit identities match the changes captured.
    changes = pipeline.warehouse(
        "SELECT count(*) FROM audit.alert_context WHERE kind = 'edit' AND NOT EXISTS ("
        "SELECT 1 FROM audit.alerts a WHERE (a.source, a.commit_lsn, a.sequence) = "
        "(alert_context.source, alert_context.commit_lsn, alert_context.sequence))"
    )
    assert changes == [(0,)]
    assert count(pipeline, "SELECT count(*) FROM audit.alert_context") == expected
    on_topic = Counter(alert_ids_on_topic(pipeline))
    assert len(on_topic) == expected
    assert max(on_topic.values()) == 1
    assert set(on_topic) == {r[0] for r in pipeline.warehouse("SELECT alert_id FROM audit.alerts")}
    assert count(pipeline, "SELECT count(*) FROM audit.alert_deliveries") == expected


class Webhook:
    """A local receiver that refuses (503) until told to accept, counting POSTs by alert id."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accept = threading.Event()
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.keys_match = True
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body: dict[str, Any] = json.loads(
                    self.rfile.read(int(self.headers["Content-Length"]))
                )
                alert_id = str(body["alert_id"])
                hook.keys_match &= self.headers["Idempotency-Key"] == alert_id
                status = 200 if hook.accept.is_set() else 503
                (hook.accepted if status == 200 else hook.refused)[alert_id] += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the counters are the record."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @contextmanager
    def listening(self) -> Iterator[Webhook]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_webhook_down_then_up_gets_each_alert_once(schema_pipeline: Pipeline) -> None:
    pipeline = schema_pipeline
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/alerts"
    log = pipeline.spawn_log("consume")
    bookings = seed_bookings(pipeline, 3)

    def webhook_deliveries() -> int:
        return count(
            pipeline, "SELECT count(*) FROM audit.alert_deliveries WHERE channel = 'webhook'"
        )

    def kafka_deliveries() -> int:
        return count(
            pipeline, "SELECT count(*) FROM audit.alert_deliveries WHERE channel = 'kafka'"
        )

    consume = ("consume", "alerts", "--webhook", url, "--no-stdout")
    # Down: nothing listens. Alerts still reach the table and the topic at once.
    with pipeline.running(*consume, stop_timeout=10) as consumer:
        unapproved_edits(pipeline, bookings[:2], 1)
        pipeline.capture()
        wait_for("2 alerts on the topic", lambda: kafka_deliveries() == 2)
        wait_for("a refused connection", lambda: "unreachable" in log.read_text())
        assert webhook_deliveries() == 0

        webhook = Webhook(port)
        with webhook.listening():
            # Up but failing (503), and the consumer is killed while it fails.
            wait_for("a POST answered 503", lambda: sum(webhook.refused.values()) >= 1)
            consumer.send_signal(signal.SIGKILL)
            consumer.wait(timeout=10)
            assert webhook_deliveries() == 0
            with pipeline.running(*consume, stop_timeout=10):
                wait_for(
                    "the restarted consumer to retry", lambda: sum(webhook.refused.values()) >= 2
                )
                webhook.accept.set()
                wait_for("2 webhook deliveries", lambda: webhook_deliveries() == 2)
                # Up: a new alert goes straight through.
                unapproved_edits(pipeline, bookings[2:], 1)
                pipeline.capture()
                wait_for("3 webhook deliveries", lambda: webhook_deliveries() == 3)
            # Another run finds nothing left to deliver.
            pipeline.cli("consume", "alerts", "--webhook", url, "--exit-when-idle")

    recorded = {r[0] for r in pipeline.warehouse("SELECT alert_id FROM audit.alerts")}
    assert len(recorded) == 3
    assert webhook.accepted == Counter(dict.fromkeys(recorded, 1))
    assert set(webhook.refused) <= recorded
    assert webhook.keys_match
    statuses = pipeline.warehouse(
        "SELECT http_status, count(*) FROM audit.alert_deliveries WHERE channel = 'webhook' "
        "GROUP BY 1"
    )
    assert statuses == [(200, 3)]
