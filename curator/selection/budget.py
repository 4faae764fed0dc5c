"""Budgets live in ``curator.budget`` (one grammar for recipes, the CLI and the library);
this name stays for the modules that import it from here."""

from curator.budget import BudgetSpec, parse_budget, parse_cost_budget

__all__ = ["BudgetSpec", "parse_budget", "parse_cost_budget"]
