"""Alert documents through Avro and JSON, the batch decoding, and the webhook's backoff, offline."""

from __future__ import annotations

import json

from bookaudit.consumers.alerts.job import decode_batch
from bookaudit.consumers.alerts.model import alert_document
from bookaudit.consumers.alerts.rules import NO_CONTEXT, evaluate
from bookaudit.consumers.alerts.ruleset import DEFAULT_RULES
from bookaudit.consumers.alerts.sink import backoff_delay, display_url, json_line
from bookaudit.consumers.records import Record
from bookaudit.kafka.alert import DOCUMENT_KEYS, decode_alert, encode_alert, in_schema_order
from bookaudit.kafka.serde import to_kafka
from bookaudit.model import ActorContext, Lsn, RowChange, SourceInfo, TableSchema

BOOKINGS = TableSchema(
    oid=2,
    schema="public",
    name="bookings",
    columns=("id", "status", "price"),
    types=("bigint", "text", "numeric(12,2)"),
    key=("id",),
)
INVOICES = TableSchema(
    oid=3,
    schema="public",
    name="invoices",
    columns=("id", "booking_id", "amount", "sent_at"),
    types=("bigint", "bigint", "numeric(12,2)", "timestamptz"),
    key=("id",),
)


Row = dict[str, str | None]


def row_change(
    table: TableSchema,
    op: str,
    before: Row | None,
    after: Row | None,
    lsn: int,
    actor: ActorContext,
) -> RowChange:
    return RowChange(
        table=table,
        op=op,
        before=before,
        after=after,
        xid=900 + lsn,
        commit_position=Lsn(lsn),
        position=Lsn(lsn - 8),
        sequence=0,
        data_collection_order=0,
        commit_unix_ms=1_795_000_000_123,
        actor=actor,
    )


def record(change: RowChange, offset: int) -> Record:
    kafka = to_kafka(change, SourceInfo("bookings", "db"), "ba", now_ms=1)
    return Record(kafka.topic, 0, offset, kafka.key, kafka.value, kafka.headers)


RAW = ActorContext(origin="db_session", db_user="postgres", application="psql")
BILLING = ActorContext(origin="application", id="olga", role="billing")


def test_decode_batch_keeps_watched_updates_and_sent_invoices_and_dead_letters_the_rest() -> None:
    price = row_change(
        BOOKINGS,
        "u",
        {"id": "7", "status": "done", "price": "189.50"},
        {"id": "7", "status": "done", "price": "169.50"},
        0x900,
        RAW,
    )
    status_only = row_change(
        BOOKINGS,
        "u",
        {"id": "7", "status": "new", "price": "1.00"},
        {"id": "7", "status": "done", "price": "1.00"},
        0x800,
        RAW,
    )
    insert = row_change(BOOKINGS, "c", None, {"id": "8", "status": "new", "price": "1"}, 0x700, RAW)
    sent_row: Row = {"id": "3", "booking_id": "7", "amount": "1", "sent_at": "x"}
    sent = row_change(INVOICES, "c", None, sent_row, 0x600, BILLING)
    draft = row_change(
        INVOICES, "c", None, {**sent_row, "id": "4", "sent_at": None}, 0x500, BILLING
    )
    records = [record(c, i) for i, c in enumerate([price, status_only, insert, sent, draft])]
    records.append(Record("ba.public.bookings", 0, 99, b"k", b"\x02junk"))
    batch = decode_batch(records, DEFAULT_RULES)
    assert [(c.booking_id, c.old_price, c.new_price) for c in batch.changes] == [
        ("7", "189.50", "169.50")
    ]
    assert [(i.booking_id, i.invoice) for i in batch.invoices] == [("7", "3")]
    assert [d.record.offset for d in batch.dead] == [99]
    assert batch.booking_keys() == ["bookings/7"]


def _document() -> dict[str, object]:
    price = row_change(
        BOOKINGS,
        "u",
        {"id": "7", "status": "done", "price": "189.50"},
        {"id": "7", "status": "done", "price": "169.50"},
        0x900,
        RAW,
    )
    change = decode_batch([record(price, 5)], DEFAULT_RULES).changes[0]
    alert = evaluate(change, NO_CONTEXT, DEFAULT_RULES)[0]
    return {**alert_document(alert), "recorded_at_ms": 1_795_000_000_500}


def test_the_document_is_an_alert_avsc_record_with_exact_text_values() -> None:
    document = _document()
    assert list(document) == list(DOCUMENT_KEYS)
    assert decode_alert(encode_alert(document)) == document
    assert document["old_price"] == "189.50" and document["change_pct"] == "-10.55"
    assert document["actor"] == "postgres (db role via psql)"
    assert document["committed_at"] == "2026-11-18T11:06:40.123+00:00"
    assert document["audit_entry"] == {
        "source": "bookings",
        "commit_lsn": "0/900",
        "sequence": 0,
        "kafka_topic": "ba.public.bookings",
        "kafka_partition": 0,
        "kafka_offset": 5,
    }
    line = json_line(document)
    assert "\n" not in line and json.loads(line) == document


def test_schema_order_survives_jsonb_key_shuffling() -> None:
    document = _document()
    shuffled = dict(sorted(document.items(), key=lambda kv: (len(kv[0]), kv[0])))
    assert list(shuffled) != list(DOCUMENT_KEYS)
    assert list(in_schema_order(shuffled)) == list(DOCUMENT_KEYS)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(3, cap_s=1.5) == 1.5


def test_webhook_url_is_shown_without_its_secrets() -> None:
    url = "https://bot:s3cret@hooks.example.com:8443/T0/B1?token=abc"
    shown = display_url(url)
    assert shown.startswith("https://hooks.example.com:8443/<redacted ")
    assert "s3cret" not in shown and "abc" not in shown and "T0" not in shown


def test_slack_style_token_in_the_path_is_redacted() -> None:
    token = "xoxb4f9Q2Zt8LmN3pR7sV1wY"
    url = f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{token}"
    shown = display_url(url)
    assert token not in shown and "T0123ABCD" not in shown
    assert shown.startswith("https://hooks.slack.com/<redacted ")
    # Two webhooks stay apart in the logs by their fingerprint.
    assert display_url(url + "x") != shown
