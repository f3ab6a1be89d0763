"""The alert rules as pure functions of (change, context), each kind firing and holding back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time
from decimal import Decimal

import pytest

from bookaudit.consumers.alerts.model import ChangeEvent, InvoiceSent
from bookaudit.consumers.alerts.rules import (
    NO_CONTEXT,
    RuleContext,
    apply_rule,
    evaluate,
    evaluate_batch,
    evaluate_invoice,
)
from bookaudit.consumers.alerts.ruleset import (
    DEFAULT_RULES,
    AfterInvoiceSent,
    ByFieldworker,
    InvoiceSource,
    OutsideBusinessHours,
    RepeatedEdits,
    RoleNotAllowed,
    Rule,
    RuleSet,
    Threshold,
    UntrustedAttribution,
    WatchedTable,
)
from bookaudit.consumers.records import FieldChange
from bookaudit.model import ActorContext, Lsn

# Thursday 2026-11-26 10:00 in Amsterdam (09:00 UTC).
THURSDAY_10_AMS = int(datetime(2026, 11, 26, 9, 0, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000
PRICE = ("price",)  # a rule's fields, as a rule file's default gives them for the sample map


def change(
    old: str = "100.00",
    new: str = "105.00",
    *,
    role: str | None = "dispatcher",
    actor: str | None = "dana",
    approval_ref: str | None = None,
    lsn: int = 0x500,
    sequence: int = 0,
    at_ms: int = THURSDAY_10_AMS,
    booking: str | None = "42",
    extra: tuple[FieldChange, ...] = (),
) -> ChangeEvent:
    return ChangeEvent(
        source="bookings",
        commit_position=Lsn(lsn),
        sequence=sequence,
        txid=700 + lsn,
        committed_at_ms=at_ms,
        table="public.bookings",
        booking_id=booking,
        actor=ActorContext(
            origin="application" if actor else "db_session",
            id=actor,
            role=role,
            approval_ref=approval_ref,
            db_user="postgres",
            application="bookings-app",
        ),
        changes=(FieldChange("price", old, new), *extra),
        price_column="price",
        old_price=old,
        new_price=new,
        kafka_topic="ba.public.bookings",
        kafka_partition=1,
        kafka_offset=lsn,
    )


def invoice(lsn: int, booking: str = "42") -> InvoiceSent:
    return InvoiceSent("bookings", Lsn(lsn), 0, THURSDAY_10_AMS - MINUTE, booking, "9")


def rules(*rule: Rule) -> RuleSet:
    return RuleSet(
        (WatchedTable("public.bookings", "id", "price"),),
        InvoiceSource("public.invoices", "booking_id", "sent_at"),
        rule,
    )


def fired(rule: Rule, event: ChangeEvent, ctx: RuleContext = NO_CONTEXT) -> bool:
    return apply_rule(rule, event, ctx) is not None


ROLE = RoleNotAllowed(fields=PRICE, name="role", allowed_roles=frozenset({"admin"}))


def test_role_not_allowed_fires_for_other_roles_and_for_no_role() -> None:
    assert fired(ROLE, change(role="dispatcher"))
    assert fired(ROLE, change(role=None, actor=None))
    assert not fired(ROLE, change(role="admin"))


def test_an_approval_reference_approves_unless_the_rule_says_otherwise() -> None:
    approved = change(role="dispatcher", approval_ref="APR-7")
    assert not fired(ROLE, approved)
    assert fired(replace(ROLE, approval_exempts=False), approved)


def test_exempt_roles_hold_back_any_rule() -> None:
    rule = Threshold(
        fields=PRICE, name="t", min_percent=Decimal("1"), exempt_roles=frozenset({"cfo"})
    )
    assert fired(rule, change("100", "200", role="admin"))
    assert not fired(rule, change("100", "200", role="cfo"))


def test_only_watched_fields_on_watched_tables_count() -> None:
    status_only = replace(
        change(), changes=(FieldChange("status", "scheduled", "cancelled"),), new_price="100.00"
    )
    assert not fired(ROLE, status_only)
    assert fired(replace(ROLE, fields=("price", "status")), status_only)
    assert not fired(replace(ROLE, tables=("public.invoice_lines",)), change())


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("100.00", "110.00", False),  # exactly 10 %: not over
        ("100.00", "110.01", True),
        ("100.00", "89.99", True),  # down counts too
        ("1000.00", "1049.99", False),  # under both
        ("1000.00", "1050.01", True),  # 5 %, but over 50 absolute
        ("0.00", "0.01", True),  # from zero: infinitely many percent
        ("0.10", "0.30", True),  # float arithmetic would say 199.99999... here
        ("abc", "1.00", False),  # not a number: nothing to measure
    ],
)
def test_threshold_compares_exact_decimals(old: str, new: str, expected: bool) -> None:
    rule = Threshold(fields=PRICE, name="t", min_percent=Decimal("10"), min_absolute=Decimal("50"))
    assert fired(rule, change(old, new)) is expected


def test_threshold_with_only_an_absolute_limit() -> None:
    rule = Threshold(fields=PRICE, name="t", min_absolute=Decimal("0.10"))
    assert not fired(rule, change("0.10", "0.20"))
    assert fired(rule, change("0.10", "0.21"))


def test_after_invoice_needs_an_invoice_sent_in_an_earlier_transaction() -> None:
    rule = AfterInvoiceSent(fields=PRICE, name="inv")
    event = change(lsn=0x500)
    assert not fired(rule, event)
    assert fired(rule, event, RuleContext(invoice_sent=invoice(0x400)))
    assert not fired(rule, event, RuleContext(invoice_sent=invoice(0x500)))  # same transaction
    assert not fired(rule, event, RuleContext(invoice_sent=invoice(0x600)))
    assert not fired(rule, event, RuleContext(invoice_sent=invoice(0x400, booking="43")))
    assert not fired(rule, change(approval_ref="CN-1"), RuleContext(invoice_sent=invoice(0x400)))


def test_an_invoice_read_after_the_change_still_raises_the_alert_once() -> None:
    ruleset = rules(AfterInvoiceSent(fields=PRICE, name="inv"), ROLE)
    before, after = change(lsn=0x300), change(lsn=0x500)
    late = evaluate_invoice(invoice(0x400), [before, after], ruleset)
    assert [(a.rule, a.event.commit_position) for a in late] == [("inv", 0x500)]
    # Seen both ways in one batch, it is still one alert.
    both = evaluate_batch(
        [after], [RuleContext(invoice_sent=invoice(0x400))], [invoice(0x400)], [[after]], ruleset
    )
    assert sorted(a.rule for a in both) == ["inv", "role"]


def test_by_fieldworker() -> None:
    rule = ByFieldworker(name="fw", fields=("price", "scheduled_start"))
    assert fired(rule, change(role="fieldworker"))
    assert not fired(rule, change(role="dispatcher"))


def test_outside_business_hours_uses_the_commit_time_in_the_zone() -> None:
    rule = OutsideBusinessHours(fields=PRICE, name="h", timezone="Europe/Amsterdam")
    assert not fired(rule, change(at_ms=THURSDAY_10_AMS))
    assert fired(rule, change(at_ms=THURSDAY_10_AMS + 8 * 60 * MINUTE))  # 18:00 is closed
    assert not fired(rule, change(at_ms=THURSDAY_10_AMS + 8 * 60 * MINUTE - 1))
    assert fired(rule, change(at_ms=THURSDAY_10_AMS - 2 * 60 * MINUTE - 1))  # 07:59:59.999
    assert fired(rule, change(at_ms=THURSDAY_10_AMS + 2 * 24 * 60 * MINUTE))  # Saturday
    all_day = replace(rule, start=time(0, 0), end=None, days=frozenset(range(7)))
    assert not fired(all_day, change(at_ms=THURSDAY_10_AMS + 2 * 24 * 60 * MINUTE))


def test_repeated_edits_count_the_same_actor_on_the_same_booking_in_the_window() -> None:
    rule = RepeatedEdits(fields=PRICE, name="rep", edits=3, window_minutes=10)
    first = change(lsn=0x100, at_ms=THURSDAY_10_AMS)
    second = change(lsn=0x200, at_ms=THURSDAY_10_AMS + 4 * MINUTE)
    third = change(lsn=0x300, at_ms=THURSDAY_10_AMS + 10 * MINUTE)
    assert not fired(rule, second, RuleContext(earlier_edits=(first,)))
    assert fired(rule, third, RuleContext(earlier_edits=(first, second)))
    late = change(lsn=0x300, at_ms=THURSDAY_10_AMS + 10 * MINUTE + 1)  # first is out of window
    assert not fired(rule, late, RuleContext(earlier_edits=(first, second)))
    other_actor = replace(first, actor=replace(first.actor, id="eve"))
    assert not fired(rule, third, RuleContext(earlier_edits=(other_actor, second)))
    other_booking = replace(first, booking_id="43")
    assert not fired(rule, third, RuleContext(earlier_edits=(other_booking, second)))
    later_one = change(lsn=0x400, at_ms=THURSDAY_10_AMS + 5 * MINUTE)
    assert not fired(rule, third, RuleContext(earlier_edits=(later_one, second)))


def test_default_rules_on_the_demo_edits() -> None:
    sent = RuleContext(invoice_sent=invoice(0x400))
    approved_raise = change(
        "149.00", "189.50", role="admin", actor="alice", approval_ref="APR-1042", lsn=0x300
    )
    assert evaluate(approved_raise, NO_CONTEXT, DEFAULT_RULES) == []
    small_admin_fix = change("189.50", "190.00", role="admin", actor="alice", lsn=0x380)
    assert evaluate(small_admin_fix, NO_CONTEXT, DEFAULT_RULES) == []
    raw_psql = change("189.50", "169.50", role=None, actor=None, lsn=0x500)
    alerts = evaluate(raw_psql, sent, DEFAULT_RULES)
    assert [a.kind for a in alerts] == ["role_not_allowed", "threshold", "after_invoice_sent"]
    first = alerts[0]
    assert first.alert_id == "bookings:0/500:0:price-by-unauthorised-role"
    assert first.change_pct == Decimal("-10.55")
    assert first.event.actor.display == "postgres (db role via bookings-app)"
    assert "price 189.50 -> 169.50 (-10.55%) on bookings 42" in first.message


def test_the_alert_id_is_the_change_identity_and_the_rule() -> None:
    a = apply_rule(ROLE, change(lsn=0x1_0000_0010, sequence=3), NO_CONTEXT)
    b = apply_rule(ROLE, change(lsn=0x1_0000_0010, sequence=3, new="106.00"), NO_CONTEXT)
    assert a is not None and b is not None
    assert a.alert_id == b.alert_id == "bookings:1/10:3:role"


def test_untrusted_attribution_fires_on_forged_or_missing_context_even_if_approved() -> None:
    rule = UntrustedAttribution(name="untrusted", severity="critical", fields=("price",))
    trusted = change(role="admin", actor="alice", approval_ref="APR-1")
    assert not fired(rule, trusted)
    assert not fired(rule, change(role=None, actor=None))  # db_session: the database vouches
    for origin in ("forged", "missing"):
        event = replace(trusted, actor=replace(trusted.actor, origin=origin))
        alert = apply_rule(rule, event, NO_CONTEXT)
        assert alert is not None and origin in alert.message
    assert [r.name for r in DEFAULT_RULES.rules if isinstance(r, UntrustedAttribution)] == [
        "untrusted-attribution"
    ]
