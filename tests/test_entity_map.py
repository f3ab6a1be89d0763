"""The entity map: the sample default, a second schema's names, and one-line errors per mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bookaudit.config import load_config
from bookaudit.entity_map import (
    EntityMap,
    FieldRoles,
    TableRef,
    default_map,
    load_map,
    parse_map,
)
from bookaudit.errors import ConfigError

# A field-service schema that shares no name with the sample: jobs keyed by job_no, clients,
# invoices naming the job by job_ref, payments reaching the job only through their invoice.
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


def _jobs() -> EntityMap:
    return parse_map(tomllib.loads(JOBS_MAP)["map"], "jobs.toml")


def test_default_map_is_the_sample_schema() -> None:
    m = default_map()
    assert m.booking.table == TableRef("public", "bookings") and m.booking.key == "id"
    assert m.customer is not None and m.customer.table == TableRef("public", "customers")
    assert m.booking.customer_column == "customer_id"
    assert [e.kind for e in m.related] == ["assignment", "invoice", "payment", "note"]
    assert m.booking.fields.role_of("scheduled_end") == "schedule"
    assignments = m.entity("public.assignments")
    assert assignments is not None and assignments.fields.role_of("fieldworker") == "assignment"
    assert m.is_ignored("updated_at") and not m.is_ignored("price")
    assert m.of_kind("invoice")[0].sent_column == "sent_at"
    assert m.cancelled_statuses == ("cancelled",)


def test_booking_of_direct_through_and_unmapped() -> None:
    m = _jobs()
    invoices: dict[str, dict[str, str | None]] = {
        "INV-7": {"invoice_no": "INV-7", "job_ref": "J-1001"}
    }

    def lookup(table: TableRef, key: str) -> dict[str, str | None] | None:
        assert table == TableRef("billing", "invoices")
        return invoices.get(key)

    assert m.booking_of("ops.jobs", {"job_no": "J-1001"}) == "J-1001"
    assert m.booking_of("billing.invoices", {"job_ref": "J-1001"}) == "J-1001"
    assert m.booking_of("billing.payments", {"invoice_ref": "INV-7"}, lookup) == "J-1001"
    assert m.booking_of("billing.payments", {"invoice_ref": "INV-9"}, lookup) is None
    assert m.booking_of("billing.payments", {"invoice_ref": None}, lookup) is None
    assert m.booking_of("ops.clients", {"client_no": "C1"}) is None
    assert m.booking_of("public.bookings", {"id": "1"}) is None
    assert m.customer_of({"job_no": "J-1", "client_ref": "C-9"}) == "C-9"
    assert [str(e.table) for e in m.path("billing.payments")] == [
        "billing.payments",
        "billing.invoices",
    ]
    assert m.path("ops.jobs") == ()


def test_labels_roles_and_columns() -> None:
    m = _jobs()
    payment = m.entity(TableRef("billing", "payments"))
    assert payment is not None and payment.label == "Payment"
    assert payment.link_column == "invoice_ref"
    assert m.booking.columns() == (
        "job_no", "client_ref", "window_from", "window_to", "quoted_total", "state", "technician",
    )  # fmt: skip
    assert list(FieldRoles(price=("a",), status=("b",)).items()) == [
        ("price", "a"),
        ("status", "b"),
    ]
    assert m.tables[-1] == TableRef("billing", "payments")


def test_config_reads_the_map_from_bookaudit_toml(tmp_path: Path) -> None:
    toml = tmp_path / "bookaudit.toml"
    toml.write_text('[bookaudit]\nslot = "s1"\n' + JOBS_MAP)
    cfg = load_config(env={}, toml_path=toml)
    assert cfg.slot == "s1" and cfg.entity_map.booking.key == "job_no"
    assert cfg.entity_map.origin == str(toml)
    assert load_config(env={}).entity_map == default_map()
    assert load_map(toml) == cfg.entity_map


def _edit(old: str, new: str) -> dict[str, Any]:
    assert old in JOBS_MAP
    doc: dict[str, Any] = tomllib.loads(JOBS_MAP.replace(old, new))["map"]
    return doc


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('key = "job_no"\n', "", r"\[map.booking\]: key is required"),
        ('table = "ops.jobs"\n', 'table = "a.b.c"\n', r"\[map.booking\]: table 'a.b.c'"),
        ('kind = "payment"', 'kind = "Payment!"', r"#2 \(billing.payments\): kind 'Payment!'"),
        ('kind = "payment"', 'kind = "booking"', r"kind 'booking' must be a lower-case noun"),
        (
            'via = "invoice_ref"',
            'via = "invoice_ref"\nbooking = "x"',
            r"either booking .* or through",
        ),
        ('via = "invoice_ref"\n', "", r"through billing.invoices needs via"),
        ('booking = "job_ref"', 'booking = "job_ref"\nvia = "x"', r"via goes with through"),
        ('through = "billing.invoices"', 'through = "ops.clients"', r"neither the booking table"),
        ('key = "invoice_no"\n', "", r"through billing.invoices, which needs key"),
        ('table = "billing.payments"', 'table = "billing.invoices"', r"mapped twice"),
        ('customer = "client_ref"\n', "", r"\[map.booking\] needs customer"),
        ('price = ["paid"]', 'price = [""]', r"price must be a list of column names"),
        ('price = ["paid"]', 'colour = "red"', r"#2 \(billing.payments\): unknown key 'colour'"),
        ('ignore_fields = ["modified_at"]', "ignore = []", r"\[map\]: unknown key 'ignore'"),
    ],
)
def test_each_mistake_is_named_in_one_line(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_map(_edit(old, new), "jobs.toml")
    assert "\n" not in str(info.value) and str(info.value).startswith("jobs.toml")


def test_a_cycle_of_through_tables_is_refused() -> None:
    doc = _edit('booking = "job_ref"', 'through = "billing.payments"\nvia = "pay_ref"')
    doc["related"][1]["key"] = "payment_no"
    with pytest.raises(ConfigError, match=r"never reaches the booking"):
        parse_map(doc, "jobs.toml")


def test_missing_booking_section_and_missing_map(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[map.booking\] is required"):
        parse_map({"ignore_fields": []}, "x.toml")
    plain = tmp_path / "plain.toml"
    plain.write_text('[bookaudit]\nslot = "s"\n')
    with pytest.raises(ConfigError, match="has no \\[map\\] table"):
        load_map(plain)
