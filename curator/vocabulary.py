"""The names a recipe, the CLI and the app may use, each defined once.

Bottom layer: imports nothing from curator, so ``config`` validates against these names and
the modules that own the behaviour (``stages``, ``selection``, ``scoring``, ``export``) import
them from here instead of repeating them. ``curator.stages.registry`` maps every name in
``METHODS`` to its ranker (a test checks that the two agree).
"""

from __future__ import annotations

STAGES = ("instruction", "task", "continual")

# Selection methods, and the families the stage layer treats alike.
METHODS = ("delift", "embedding", "random", "rds", "dualsft", "gast", "less", "full")
KERNEL_METHODS = ("delift", "embedding")           # greedy submodular maximisation of a kernel
GRADIENT_METHODS = ("dualsft", "gast", "less")     # selected from gradient scores, not kernels
MODEL_METHODS = ("delift", "embedding", "rds", "dualsft", "gast", "less")  # need the model
TARGET_METHODS = ("delift", "embedding", "rds")    # the task stage needs a target set for these

# Submodular functions: canonical name -> accepted spellings.
FUNCTION_ALIASES: dict[str, tuple[str, ...]] = {
    "facility_location": ("facility_location", "fl", "facilitylocation"),
    "flmi": ("flmi", "fl1mi", "facility_location_mutual_information", "facility_location_mi"),
    "flvmi": (
        "flvmi",
        "fl2mi",
        "facility_location_variant_mutual_information",
        "facility_location_variant_mi",
    ),
    "flcg": ("flcg", "facility_location_conditional_gain", "facility_location_cg"),
    "graph_cut": ("graph_cut", "gc", "graphcut"),
}
FUNCTIONS = tuple(FUNCTION_ALIASES)
_CANONICAL = {alias: name for name, aliases in FUNCTION_ALIASES.items() for alias in aliases}
DEFAULT_FUNCTION = {"instruction": "facility_location", "task": "flvmi", "continual": "flcg"}

OPTIMIZERS = ("naive", "lazy", "stochastic")
ENGINES = ("local", "ray")                         # where scoring runs (scoring/engine.py)
# DELIFT's d over the answer's own tokens, or the whole response (with end-of-turn tokens)
SCORED_TOKENS = ("answer", "response")
# The evaluation loss (curator/training/evaluate.py) over the same two spans; "answer" by default
EVAL_TOKENS = SCORED_TOKENS
DISTANCES = ("prob-l2", "nll")                     # DELIFT: the paper's distance, or mean NLL
# DELIFT: leave out net-harmful examples ("mean"), also those whose own response the examples
# most like them make less likely ("mean+fit", the default), or neither ("off")
HARM_RULES = ("mean+fit", "mean", "off")
DEFAULT_HARM = "mean+fit"
MASK_RANKS = ("signed", "abs")                     # DualSFT mask: signed phi (the reference) or |phi|
# DualSFT data utilities: <u, g_n> as it is ("none") or over unit-norm g_n ("unit", as LESS)
GRADIENT_NORMALIZE = ("none", "unit")
DEFAULT_WARMUP_STEPS = 10                          # DualSFT: warm-up steps before scoring
# GAST in training: each layer samples its rows per batch (the paper) or fixed subsets
GAST_SAMPLING = ("batch", "static")
SELF_COVERAGE = ("best", "one")                    # DELIFT kernels' diagonal (scoring/kernels.py)
CONTINUAL_POOLS = ("new", "all")
# The quality prior (curator/stages/quality.py): each signal is a kNN z-score of a row's
# log signal among its most similar pool rows; "combined" is the mean of the three
QUALITY_SIGNALS = ("combined", "ifd", "loss", "stop")
# Methods whose default is the prior off: on bench/quality_prior.py the prior's filter made
# warmed-up DualSFT worse (-0.24 nats [-0.37, -0.11] answer loss); set `quality:` to use it
PRIOR_OFF_BY_DEFAULT = ("dualsft",)
EXPORT_FORMATS = ("jsonl", "messages", "alpaca", "sharegpt", "parquet", "hf")


def canonical_function(name: str) -> str:
    """The canonical name for a function name or alias (case and '-' insensitive)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in _CANONICAL:
        raise ValueError(
            f"unknown function {name!r}; choose one of {', '.join(FUNCTIONS)} "
            f"(aliases: {', '.join(sorted(set(_CANONICAL) - set(FUNCTIONS)))})"
        )
    return _CANONICAL[key]
