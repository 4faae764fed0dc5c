"""Budgets: how many candidates (or how much cost) a selection may spend.

Recipes and the CLI write budgets as text ("30%", "5000"), the library as numbers (0.3, 5000).
Every form goes through ``read_budget``, the one parse and check, so that "30%" means the
same thing everywhere and a wrong budget fails before any kernel is touched, with the same
message from a recipe, the command line and the library.
"""

from __future__ import annotations

import decimal
import math
import numbers
import re
from dataclasses import dataclass

BudgetSpec = int | float | str

# DualSFT's mask when a stage or `curator mask` names no parameter budget: this share of the
# parameters stays trainable.
DEFAULT_PARAM_BUDGET = "5%"

# The text form recipes and the CLI accept: a plain decimal, optionally a percentage.
_BUDGET_TEXT = re.compile(r"^\s*(\d+(\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Budget:
    """A checked budget: ``value`` is a share of the pool in (0, 1] when ``share``, else a
    whole count >= 1; ``text`` is how a recipe keeps it ("30%", "100", "0.3")."""

    value: float
    share: bool
    text: str


def read_budget(spec: BudgetSpec) -> Budget:
    """Parse and check a budget before any pool is known: the one grammar.

    An int or an integer string (``100``, ``"100"``) is a count; a float up to 1 or a
    decimal string up to 1 (``0.3``, ``"0.3"``, ``1.0``) is a fraction of the pool; a string
    ending in ``%`` (``"30%"``) is a percentage of the pool; a whole float or decimal above
    one (``5.0``, ``"2.0"``) is a count. Refuses what would be refused for every pool: zero,
    negative, non-finite, over 100%, a decimal count above one.
    """
    if isinstance(spec, bool) or not isinstance(spec, (str, numbers.Real)):
        raise ValueError(f"budget must be a count (100), a fraction (0.3) or a percentage "
                         f"(30%), got {spec!r}")
    if isinstance(spec, str):
        match = _BUDGET_TEXT.match(spec)
        if match is None:
            raise ValueError(f"budget must be a count (100), a fraction (0.3) or a "
                             f"percentage (30%), got {spec!r}")
        text = spec.strip()
        number = float(match.group(1))
        percent, integer = bool(match.group(3)), match.group(2) is None
    else:
        number = float(spec)
        if not math.isfinite(number):
            raise ValueError(f"budget {spec!r} is not a finite number")
        integer = isinstance(spec, numbers.Integral)
        percent = False
        # the text a recipe keeps, written so that reading it again gives the same budget
        text = str(int(spec)) if integer else format(decimal.Decimal(repr(number)), "f")
    if number <= 0:
        raise ValueError(f"budget must be above 0, got {spec!r}")
    if percent:
        if number > 100:
            raise ValueError(f"budget above 100% ({spec!r})")
        return Budget(number / 100.0, True, text)
    if not integer and number <= 1.0:
        return Budget(number, True, text)
    if number != int(number):
        raise ValueError(f"budget {text} is neither a whole count nor a fraction in (0, 1]; "
                         "write a percentage as '30%'")
    return Budget(number, False, text)


def check_budget(spec: BudgetSpec) -> str:
    """A budget checked by ``read_budget`` and kept as text ("30%", "100", "0.3"): recipes
    store it, ``parse_budget`` turns it into a count against the pool later."""
    return read_budget(spec).text


def parse_budget(spec: BudgetSpec, n: int) -> int:
    """Turn a budget spec (``read_budget``'s grammar) into a number of candidates to pick
    from a pool of ``n``. A fraction is rounded to the nearest count but never below one,
    so a tiny pool still gets a non-empty selection.

    Raises ValueError for what ``read_budget`` refuses, and for a count above ``n``.
    """
    if n <= 0:
        raise ValueError(f"cannot select from an empty pool (n={n})")
    budget = read_budget(spec)
    if budget.share:
        return max(1, min(n, int(round(budget.value * n))))
    count = int(budget.value)
    if count > n:
        raise ValueError(f"budget {count} is larger than the pool of {n} candidates")
    return count


def read_share(spec: BudgetSpec) -> Budget:
    """``read_budget`` for a parameter budget: always a share of the scope ('5%' or '0.05'),
    never a count (a count of 1 is the whole scope)."""
    budget = read_budget(spec)
    if budget.share:
        return budget
    if budget.value != 1:
        raise ValueError(f"a parameter budget is a share of the parameters, as a fraction "
                         f"(0.05) or a percentage (5%), got {spec!r}")
    return Budget(1.0, True, budget.text)


def budget_fraction(spec: BudgetSpec) -> float:
    """A parameter budget as a share ('5%' or '0.05' -> 0.05; ``read_share``)."""
    return read_share(spec).value


def parse_cost_budget(spec: BudgetSpec, total_cost: float) -> float:
    """Turn a budget spec into a total cost, when candidates have costs (e.g. token counts).

    A number (``5e6``, ``"5000000"``) is an absolute cost; a percentage (``"30%"``) is that share
    of the whole pool's cost. Unlike :func:`parse_budget`, a plain float below one is a cost,
    not a fraction, because costs are in the caller's own units.
    """
    if isinstance(spec, str) and spec.strip().endswith("%"):
        return read_budget(spec).value * float(total_cost)
    if isinstance(spec, bool):
        raise ValueError(f"cost budget must be a number or a percentage, not {spec!r}")
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"cost budget {spec!r} is not a number or a percentage") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"cost budget {spec!r} must be a positive finite number")
    return value
