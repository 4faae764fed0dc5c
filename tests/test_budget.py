"""The one budget grammar (curator.budget): text checked before a pool is known, shares for
parameter budgets, counts against a pool."""

from __future__ import annotations

import pytest

from curator.budget import Budget, budget_fraction, check_budget, parse_budget, read_budget


def test_check_budget_keeps_the_text_and_agrees_with_parse_budget():
    for text, n, count in (("30%", 10, 3), (" 100 ", 200, 100), ("0.25", 8, 2),
                           ("2.0", 5, 2), ("12.5%", 16, 2)):
        assert check_budget(text) == text.strip()
        assert parse_budget(check_budget(text), n) == count


@pytest.mark.parametrize(("bad", "message"), [
    ("0", "budget must be above 0"), ("0%", "budget must be above 0"),
    ("150%", "budget above 100%"), ("lots", "budget must be a count"),
    ("-3", "budget must be a count"), (True, "budget must be a count"),
    ("2.5", "neither a whole count nor a fraction"),
])
def test_check_budget_refuses(bad, message):
    with pytest.raises(ValueError, match=message):
        check_budget(bad)


def test_budget_fraction():
    assert budget_fraction("5%") == pytest.approx(0.05)
    assert budget_fraction("0.2") == pytest.approx(0.2)
    assert budget_fraction("100%") == 1.0
    assert budget_fraction("1") == 1.0
    for bad, message in (("0", "budget must be above 0"), ("0%", "budget must be above 0"),
                         ("150%", "budget above 100%"), ("five", "budget must be a count"),
                         ("2", "a parameter budget is a share of the parameters")):
        with pytest.raises(ValueError, match=message):
            budget_fraction(bad)


@pytest.mark.parametrize(("spec", "budget"), [
    ("30%", Budget(0.3, True, "30%")), (" 100 ", Budget(100.0, False, "100")),
    ("0.3", Budget(0.3, True, "0.3")), ("1.0", Budget(1.0, True, "1.0")),
    ("1", Budget(1.0, False, "1")), ("2.0", Budget(2.0, False, "2.0")),
    (0.3, Budget(0.3, True, "0.3")), (1.0, Budget(1.0, True, "1.0")),
    (5.0, Budget(5.0, False, "5.0")), (7, Budget(7.0, False, "7")),
    (1e-05, Budget(1e-05, True, "0.00001")),
])
def test_read_budget_is_the_one_grammar(spec, budget):
    assert read_budget(spec) == budget
    # the text a recipe keeps reads back as the same budget
    assert read_budget(budget.text) == Budget(budget.value, budget.share, budget.text)
