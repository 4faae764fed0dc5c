"""Submodular selection: set functions over similarity kernels and greedy optimisers.

``select(kernel, budget, function=..., optimizer=...)`` is the entry point; see its docstring
for the kernel orientation ``(n_cover, n_candidates)`` and the shapes of the other kernels.
"""

from curator.budget import parse_budget, parse_cost_budget
from curator.selection.api import SelectionResult, build_function, select
from curator.selection.functions import (
    FacilityLocation,
    FacilityLocationConditionalGain,
    FacilityLocationMutualInformation,
    FacilityLocationVariantMutualInformation,
    GraphCut,
    SetFunction,
)
from curator.selection.optimizers import OPTIMIZERS, maximize
from curator.vocabulary import FUNCTION_ALIASES, FUNCTIONS, canonical_function

__all__ = [
    "FUNCTIONS",
    "FUNCTION_ALIASES",
    "OPTIMIZERS",
    "FacilityLocation",
    "FacilityLocationConditionalGain",
    "FacilityLocationMutualInformation",
    "FacilityLocationVariantMutualInformation",
    "GraphCut",
    "SelectionResult",
    "SetFunction",
    "build_function",
    "canonical_function",
    "maximize",
    "parse_budget",
    "parse_cost_budget",
    "select",
]
