"""docs/aws-behaviour.md documents every rule of the behaviour table: its generated table is
current, every rule is named in a section that says how iotpipe handles it, and every test the
doc names exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.awsbehaviour import ALL_RULES
from tests.awsbehaviour.doc import BEGIN, DOC, END, render, table

TESTS = Path(__file__).resolve().parent


def _sections() -> str:
    text = DOC.read_text()
    return text.split(BEGIN, 1)[0] + text.split(END, 1)[1]


def test_the_rule_table_is_generated_from_the_rules():
    current = DOC.read_text()
    assert current == render(current), "run: python3 -m tests.awsbehaviour.doc"
    for rule in ALL_RULES:
        assert f"| `{rule.name}` |" in current


def test_every_rule_is_named_where_its_handling_is_described():
    sections = _sections()
    missing = [r.name for r in ALL_RULES if f"`{r.name}`" not in sections]
    assert missing == [], f"rules without a section saying how iotpipe handles them: {missing}"


def test_every_test_the_doc_names_exists():
    defined = set()
    for path in TESTS.rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    named = set(re.findall(r"`(test_\w+)`", _sections()))
    assert named and named - defined == set()


def test_a_new_rule_makes_the_check_fail():
    from dataclasses import replace

    extra = replace(ALL_RULES[0], name="test.undocumented-rule")
    current = DOC.read_text()
    assert render(current, (*ALL_RULES, extra)) != current
    assert "test.undocumented-rule" in table((*ALL_RULES, extra))
    assert "`test.undocumented-rule`" not in _sections()
