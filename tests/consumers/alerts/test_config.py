"""The rule file: the README's example parses, defaults apply, and every mistake names its key."""

from __future__ import annotations

import re
from datetime import time
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from bookaudit.cli import main
from bookaudit.consumers.alerts.rulefile import describe, load_rules
from bookaudit.consumers.alerts.ruleset import (
    DEFAULT_RULES,
    OutsideBusinessHours,
    RepeatedEdits,
    RoleNotAllowed,
    Threshold,
)
from bookaudit.errors import ConfigError

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_rule_file() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    examples = [b for b in blocks if "[[rule]]" in b]
    assert len(examples) == 1, "README should show exactly one rule file"
    return str(examples[0])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return path


def test_readme_rule_file_parses_into_every_rule_kind(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, readme_rule_file()))
    assert {r.kind for r in rules.rules} == {
        "role_not_allowed",
        "threshold",
        "after_invoice_sent",
        "by_fieldworker",
        "outside_business_hours",
        "repeated_edits",
        "untrusted_attribution",
    }
    assert rules.topics_tables[-1] == "public.invoices"
    threshold = next(r for r in rules.rules if isinstance(r, Threshold))
    # Floats in the file become exact decimals, never binary floats.
    assert isinstance(threshold.min_percent, Decimal)
    assert len(describe(rules)) == 2 + len(rules.watch) + len(rules.rules)


def test_no_file_means_the_default_rules() -> None:
    rules = load_rules(None)
    assert rules is DEFAULT_RULES
    assert [r.kind for r in rules.rules] == [
        "role_not_allowed", "threshold", "after_invoice_sent", "untrusted_attribution",
    ]  # fmt: skip
    assert rules.topics_tables == ("public.bookings", "public.invoices")


def test_kind_specific_values(tmp_path: Path) -> None:
    rules = load_rules(
        write(
            tmp_path,
            """
[[watch]]
table = "public.bookings"

[[rule]]
name = "role"
kind = "role_not_allowed"
fields = ["price", "status"]
allowed_roles = ["admin", "billing"]

[[rule]]
name = "pct"
kind = "threshold"
min_percent = 12.5

[[rule]]
name = "night"
kind = "outside_business_hours"
timezone = "America/New_York"
hours = "07:30-24:00"
days = ["sat", "sun"]

[[rule]]
name = "rep"
kind = "repeated_edits"
edits = 2
window_minutes = 5
""",
        )
    )
    role, pct, night, rep = rules.rules
    assert isinstance(role, RoleNotAllowed) and role.allowed_roles == {"admin", "billing"}
    assert role.fields == ("price", "status")
    assert isinstance(pct, Threshold) and pct.min_percent == Decimal("12.5")
    assert pct.min_absolute is None
    assert isinstance(night, OutsideBusinessHours)
    assert (night.start, night.end, night.days) == (time(7, 30), None, frozenset({5, 6}))
    assert isinstance(rep, RepeatedEdits) and (rep.edits, rep.window_minutes) == (2, 5)
    assert rules.max_window_minutes == 5
    assert rules.topics_tables == ("public.bookings",)  # no invoice rule, no invoice topic


RULE = '[[rule]]\nname = "r"\nkind = "role_not_allowed"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "defines no rules"),
        ("[[rule]]\nkind = 'threshold'\n", r"\[\[rule\]\] #1: name is required"),
        (RULE + "alowed_roles = ['x']\n", r"#1 \('r'\): unknown key 'alowed_roles'"),
        ('[[rule]]\nname = "r"\nkind = "vibes"\n', "unknown kind 'vibes'"),
        (RULE + "severity = 'urgent'\n", "severity 'urgent' must be one of"),
        ('[[rule]]\nname = "t"\nkind = "threshold"\n', "set min_percent, min_absolute or both"),
        (
            '[[rule]]\nname = "t"\nkind = "threshold"\nmin_percent = "ten"\n',
            "min_percent must be a number, got 'ten'",
        ),
        (
            '[[rule]]\nname = "t"\nkind = "threshold"\nmin_absolute = -1\n',
            "min_absolute must be a non-negative number",
        ),
        (
            '[[rule]]\nname = "h"\nkind = "outside_business_hours"\ntimezone = "Mars/Olympus"\n',
            "timezone 'Mars/Olympus' is not a known IANA zone",
        ),
        (
            '[[rule]]\nname = "h"\nkind = "outside_business_hours"\ntimezone = "UTC"\n'
            'hours = "18:00-08:00"\n',
            "must end after they start",
        ),
        (
            '[[rule]]\nname = "h"\nkind = "outside_business_hours"\ntimezone = "UTC"\n'
            'days = ["monday"]\n',
            "day 'monday' must be one of",
        ),
        (
            '[[rule]]\nname = "e"\nkind = "repeated_edits"\nedits = 1\n',
            "edits must be an integer >= 2",
        ),
        (RULE + RULE, "rule name 'r' is used twice"),
        (
            RULE + "tables = ['public.notes']\n",
            "table 'public.notes' is not in a \\[\\[watch\\]\\]",
        ),
        ('[[watch]]\ntable = "bookings"\n' + RULE, "table 'bookings' is not a valid table"),
        ("[invoices]\nsent = 'x'\n" + RULE, r"\[invoices\]: unknown key 'sent'"),
        ("colour = 'red'\n" + RULE, "unknown key 'colour'"),
        (RULE + "approval_exempts = 'no'\n", "approval_exempts must be true or false"),
        ("[[rule]\n", "not valid TOML"),
    ],
)
def test_mistakes_fail_with_one_line_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_rules(write(tmp_path, text))
    assert "\n" not in str(info.value)
    assert "alerts.toml" in str(info.value)


def test_a_missing_rule_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rule file .*nope\.toml does not exist"):
        load_rules(tmp_path / "nope.toml")


def test_alerts_rules_command_shows_a_file_or_fails_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(
        main, ["alerts", "rules", "--rules", str(write(tmp_path, readme_rule_file()))]
    )
    assert shown.exit_code == 0, shown.output
    assert "rule price-change-after-hours [outside_business_hours, low]" in shown.output
    assert "08:00-18:00 mon,tue,wed,thu,fri Europe/Amsterdam" in shown.output
    bad = runner.invoke(
        main, ["alerts", "rules", "--rules", str(write(tmp_path, RULE + "x = 1\n"))]
    )
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        f"bookaudit: error: {tmp_path / 'alerts.toml'}: [[rule]] #1 ('r'): unknown key 'x'"
    ]
