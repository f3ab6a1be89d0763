"""Outputs of the alerting job: the Avro alert topic, JSON lines on stdout, and the webhook
(recovery.py delivers what a stopped instance left undelivered)."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from bookaudit import __version__
from bookaudit.consumers.alerts.state import AlertStore, Delivery, RecordedAlert
from bookaudit.errors import BookauditError, TransientError
from bookaudit.kafka.alert import ALERT_SCHEMA_ID, encode_alert
from bookaudit.kafka.producer import KafkaSink, ProducerSettings
from bookaudit.kafka.serde import SCHEMA_HEADER, KafkaRecord


def json_line(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def display_url(url: str) -> str:
    """scheme://host only, plus a fingerprint of the rest: a webhook URL often carries its token
    in the user part, the query, or the path itself (Slack's /services/T…/B…/<token>)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    rest = url[url.find(parts.netloc) + len(parts.netloc) :] if parts.netloc else url
    if rest in ("", "/"):
        return f"{parts.scheme}://{host}{port}/"
    fingerprint = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{parts.scheme}://{host}{port}/<redacted {fingerprint}>"


def backoff_delay(failures: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Capped exponential backoff: 0.5, 1, 2, 4 ... 30 s after 1, 2, 3, 4 ... failures."""
    return min(cap_s, base_s * 2.0 ** max(0, failures - 1))


class StdoutOutput:
    """One JSON line per newly recorded alert (a live feed: the durable record is the table)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write

    def emit(self, alerts: Sequence[RecordedAlert]) -> None:
        for alert in alerts:
            self._write(json_line(alert.document))


class KafkaOutput:
    """Produces alerts to `<prefix>.alerts`, keyed by booking, and records each acknowledged one."""

    def __init__(self, bootstrap: str, topic: str, store: AlertStore) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self._store = store
        self._sink = KafkaSink(ProducerSettings(bootstrap))

    def send(self, alerts: Sequence[RecordedAlert]) -> None:
        """Produce, wait for every acknowledgment, then record the deliveries; any failure raises
        and leaves the alerts in the outbox for the next attempt."""
        if not alerts:
            return
        acked: dict[int, tuple[int, int]] = {}
        errors: list[str] = []

        def report(alert_id: int) -> Callable[[Any, Any], None]:
            def on_delivery(err: Any, msg: Any) -> None:
                if err is not None:
                    errors.append(str(err))
                else:
                    acked[alert_id] = (int(msg.partition()), int(msg.offset()))

            return on_delivery

        for alert in alerts:
            key = alert.booking_id.encode() if alert.booking_id is not None else None
            record = KafkaRecord(
                self.topic, key, encode_alert(alert.document), ((SCHEMA_HEADER, ALERT_SCHEMA_ID),)
            )
            self._sink.send(record, report(alert.id))
        self._sink.flush()
        if errors or len(acked) != len(alerts):
            raise TransientError(f"Kafka refused an alert on {self.topic}: {errors[:1]}")
        self._store.delivered(
            "kafka",
            [Delivery(a.id, self.topic, 1, *acked[a.id]) for a in alerts],
        )


class WebhookError(TransientError):
    """The webhook did not take the alert yet (not reachable, timed out, 5xx, 408 or 429)."""


class WebhookRejected(BookauditError):
    """The webhook refused this alert for good (a 4xx): retrying sends the same request again,
    so the alert is parked (recorded with its status, shown by `alerts list`) and the queue goes
    on."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# 4xx answers that mean "later", not "never".
_RETRY_LATER = frozenset({408, 425, 429})


def post_alert(url: str, document: dict[str, Any], timeout_s: float) -> int:
    """POST one alert as JSON; returns the 2xx status or raises WebhookError."""
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            # Stable across retries, so a receiver can drop a repeat after a lost answer.
            "Idempotency-Key": str(document["alert_id"]),
            "User-Agent": f"bookaudit/{__version__}",
        },
    )
    where = display_url(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        text = f"webhook {where} answered {exc.code} {exc.reason}"
        if 400 <= exc.code < 500 and exc.code not in _RETRY_LATER:
            raise WebhookRejected(text, exc.code) from None
        raise WebhookError(text) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"webhook {where} unreachable: {reason}") from None
    if not 200 <= status < 300:
        raise WebhookError(f"webhook {where} answered {status}")
    return status


class WebhookOutput:
    """Delivers alerts to the webhook in order on its own thread, so an outage delays alerts but
    never blocks the consumer. A failed POST (unreachable, timeout, 5xx) is retried with backoff
    until it succeeds; a 4xx parks the alert and the queue goes on. The outbox keeps undelivered
    alerts across restarts."""

    def __init__(
        self,
        url: str,
        store: AlertStore,
        log: Callable[[str], None],
        timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.url = url
        self.target = display_url(url)
        self._store = store
        self._log = log
        self._timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self._queue: deque[RecordedAlert] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.error: BaseException | None = None
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="bookaudit-webhook", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def submit(self, alerts: Sequence[RecordedAlert]) -> None:
        if not alerts:
            return
        with self._lock:
            self._queue.extend(alerts)
            self._idle.clear()
        self._wake.set()

    def _head(self) -> RecordedAlert | None:
        with self._lock:
            if not self._queue:
                self._idle.set()
                return None
            return self._queue[0]

    def _run(self) -> None:
        failures = 0
        attempts = 0
        status: int | None = None  # set once the head was POSTed but not yet recorded
        try:
            while not self._stop.is_set():
                head = self._head()
                if head is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                try:
                    if status is None:
                        attempts += 1
                        status = post_alert(self.url, head.document, self._timeout_s)
                    self._store.delivered(
                        "webhook", [Delivery(head.id, self.target, attempts, http_status=status)]
                    )
                except WebhookRejected as exc:
                    # Recorded like a delivery, with the refusal's status: `alerts list` shows
                    # it as parked, and a restart does not send it again.
                    status = exc.status
                    self._log(
                        f"alerts: {exc}; alert {head.document['alert_id']} parked "
                        "(see `bookaudit alerts list`), the queue goes on"
                    )
                    continue
                except TransientError as exc:
                    failures += 1
                    delay = backoff_delay(failures, cap_s=self._max_backoff_s)
                    self._log(f"alerts: {exc}; {self.pending} alert(s) wait, retry in {delay:.1f}s")
                    self._stop.wait(delay)
                    continue
                with self._lock:
                    self._queue.popleft()
                self.delivered += 1
                if failures:
                    self._log(f"alerts: webhook {self.target} delivers again")
                failures, attempts, status = 0, 0, None
        except BaseException as exc:  # surfaced to the consumer thread, which re-raises it
            self.error = exc

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted alert is delivered, or the timeout passes."""
        return self._idle.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._timeout_s + 5)
        self._store.close()
