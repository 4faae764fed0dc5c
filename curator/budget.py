"""Budgets: how many candidates (or how much cost) a selection may spend.

Recipes and the CLI write budgets as text ("30%", "5000"), the library as numbers (0.3, 5000).
Both forms go through here so that "30%" means the same thing everywhere and a wrong budget
fails before any kernel is touched, with a message that says what was wrong.
"""

from __future__ import annotations

import math
import numbers
import re

BudgetSpec = int | float | str

# The text form recipes and the CLI accept: a plain decimal, optionally a percentage.
_BUDGET_TEXT = re.compile(r"^\s*(\d+(\.\d+)?)\s*%?\s*$")


def _as_number(spec: BudgetSpec) -> tuple[float, bool, bool]:
    """Return (value, is_fraction, was_integer) for a budget spec, or raise ValueError."""
    if isinstance(spec, bool):
        raise ValueError(f"budget must be a count, a fraction or a percentage, not {spec!r}")
    if isinstance(spec, str):
        text = spec.strip()
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                raise ValueError(f"budget {spec!r} is not a percentage like '30%'") from None
            return percent / 100.0, True, False
        try:
            return float(int(text)), False, True
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"budget {spec!r} is not a count ('100'), a fraction ('0.3') or a percentage ('30%')"
            ) from None
        return value, value <= 1.0, False  # integer strings were handled above
    if isinstance(spec, numbers.Integral):
        return float(spec), False, True
    if isinstance(spec, numbers.Real):
        value = float(spec)
        # A float up to 1.0 is a fraction of the pool; a larger float must be a whole count.
        return value, value <= 1.0, False
    raise ValueError(
        f"budget must be a count, a fraction or a percentage, not {type(spec).__name__}"
    )


def parse_budget(spec: BudgetSpec, n: int) -> int:
    """Turn a budget spec into a number of candidates to pick from a pool of ``n``.

    Accepted forms: an int or an integer string (``100``, ``"100"``) is a count; a float in
    (0, 1] or a decimal string (``0.3``, ``"0.3"``) is a fraction of the pool; a string ending
    in ``%`` (``"30%"``) is a percentage of the pool. A fraction is rounded to the nearest count
    but never below one, so a tiny pool still gets a non-empty selection.

    Raises ValueError for zero, negative, non-finite, over 100 %, or a count above ``n``.
    """
    if n <= 0:
        raise ValueError(f"cannot select from an empty pool (n={n})")
    value, is_fraction, _ = _as_number(spec)
    if not math.isfinite(value):
        raise ValueError(f"budget {spec!r} is not a finite number")
    if value <= 0:
        raise ValueError(f"budget {spec!r} must be positive")
    if is_fraction:
        if value > 1.0:
            raise ValueError(f"budget {spec!r} is more than 100% of the pool")
        return max(1, min(n, int(round(value * n))))
    if value != int(value):
        raise ValueError(
            f"budget {spec!r} is neither a whole count nor a fraction in (0, 1]; "
            "write a percentage as '30%'"
        )
    count = int(value)
    if count > n:
        raise ValueError(f"budget {count} is larger than the pool of {n} candidates")
    return count


def parse_cost_budget(spec: BudgetSpec, total_cost: float) -> float:
    """Turn a budget spec into a total cost, when candidates have costs (e.g. token counts).

    A number (``5e6``, ``"5000000"``) is an absolute cost; a percentage (``"30%"``) is that share
    of the whole pool's cost. Unlike :func:`parse_budget`, a plain float below one is a cost,
    not a fraction, because costs are in the caller's own units.
    """
    if isinstance(spec, str) and spec.strip().endswith("%"):
        value, _, _ = _as_number(spec)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"budget {spec!r} must be a positive percentage")
        if value > 1.0:
            raise ValueError(f"budget {spec!r} is more than 100% of the pool's cost")
        return value * float(total_cost)
    if isinstance(spec, bool):
        raise ValueError(f"cost budget must be a number or a percentage, not {spec!r}")
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"cost budget {spec!r} is not a number or a percentage") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"cost budget {spec!r} must be a positive finite number")
    return value


def check_budget(spec: BudgetSpec) -> str:
    """Validate a budget before any pool is known and return it as text ("30%", "100",
    "0.3"), kept as given: recipes store it, ``parse_budget`` turns it into a count later.

    Refuses what ``parse_budget`` would refuse for every pool (zero, over 100%, a decimal
    count above one), so a bad budget in a recipe's last stage fails before the first runs.
    """
    text = str(spec).strip()
    if isinstance(spec, bool) or not _BUDGET_TEXT.match(text):
        raise ValueError(f"budget must be a count (100), a fraction (0.3) or a percentage "
                         f"(30%), got {spec!r}")
    number = float(text.rstrip("%"))
    if number <= 0:
        raise ValueError(f"budget must be above 0, got {spec!r}")
    if text.endswith("%") and number > 100:
        raise ValueError(f"budget above 100% ({spec!r})")
    if not text.endswith("%") and number > 1 and number != int(number):
        raise ValueError(f"budget {text} is neither a whole count nor a fraction in (0, 1]; "
                         "write a percentage as '30%'")
    return text


def budget_fraction(spec: BudgetSpec) -> float:
    """A share budget ('5%' or '0.05' -> 0.05), as parameter budgets are: always a share of
    the scope, never a count."""
    try:
        value, _, _ = _as_number(spec)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise ValueError(f"parameter budget must be in (0%, 100%], got {spec!r}")
    return value
