"""The one budget grammar (curator.budget): text checked before a pool is known, shares for
parameter budgets, counts against a pool."""

from __future__ import annotations

import pytest

from curator.budget import budget_fraction, check_budget, parse_budget


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
    for bad in ("0", "0%", "150%", "2", "five"):
        with pytest.raises(ValueError, match="parameter budget must be in"):
            budget_fraction(bad)
