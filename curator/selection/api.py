"""``select``: one call from a similarity kernel and a budget to a ranked subset.

Validation lives here, before any work, so a wrong shape or a NaN fails with a message that
names the argument instead of surfacing as a wrong selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from curator.budget import BudgetSpec, parse_budget, parse_cost_budget
from curator.selection.functions import (
    FacilityLocation,
    FacilityLocationConditionalGain,
    FacilityLocationMutualInformation,
    FacilityLocationVariantMutualInformation,
    GraphCut,
    SetFunction,
    to_csc,
)
from curator.selection.optimizers import (
    BACKENDS,
    OPTIMIZERS,
    STOCHASTIC_MEMORY_EVALS,
    maximize,
)
from curator.vocabulary import canonical_function

Kernel = np.ndarray | sp.spmatrix | sp.sparray


@dataclass
class SelectionResult:
    """A greedy selection.

    ranking: (k,) candidate indices (columns of ``kernel``) in pick order; excludes
        ``initial_subset``.
    gains: (k,) marginal gain of each pick given everything picked before it (and the initial
        subset). ``initial_objective + gains.sum() == objective`` up to float rounding.
    objective: f(initial_subset + ranking), recomputed from scratch.
    """

    ranking: np.ndarray
    gains: np.ndarray
    objective: float
    initial_objective: float
    function: str
    optimizer: str
    n_evaluations: int
    cost: float | None = None  # total cost of the picks, when costs were given
    singleton: bool = False  # cost budget: the best single candidate beat the greedy set

    def __len__(self) -> int:
        return int(self.ranking.shape[0])


def _check_kernel(name: str, kernel: Kernel) -> None:
    if not (isinstance(kernel, np.ndarray) or sp.issparse(kernel)):
        raise ValueError(
            f"{name} must be a numpy array or a scipy sparse matrix, not {type(kernel).__name__}"
        )
    if kernel.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {kernel.shape}")
    values = kernel.data if sp.issparse(kernel) else kernel
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
        values.dtype, np.complexfloating
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {values.dtype}")
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf); similarities must be finite")
    if values.size and values.min() < 0:
        raise ValueError(
            f"{name} has negative values (min {values.min():.4g}); similarities must be >= 0 (scale to [0, 1])"
        )


def _check_param(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def build_function(
    function: str,
    kernel: Kernel | None,
    *,
    query_kernel: Kernel | None = None,
    private_kernel: Kernel | None = None,
    eta: float = 1.0,
    nu: float = 1.0,
    lam: float = 0.5,
) -> SetFunction:
    """Validate the kernels for ``function`` and build it (see :func:`select` for shapes)."""
    name = canonical_function(function)
    if query_kernel is not None and name not in ("flmi", "flvmi"):
        raise ValueError(f"query_kernel is only used by flmi and flvmi, not by {name}")
    if private_kernel is not None and name != "flcg":
        raise ValueError(f"private_kernel is only used by flcg, not by {name}")
    if kernel is None and name != "flvmi":
        raise ValueError(f"{name} needs a kernel of shape (n_cover, n_candidates)")
    if kernel is not None:
        _check_kernel("kernel", kernel)
        if 0 in kernel.shape:
            raise ValueError(
                f"kernel has shape {kernel.shape}; it needs at least one row and one candidate"
            )

    if name in ("flmi", "flvmi"):
        if query_kernel is None:
            raise ValueError(f"{name} needs query_kernel (similarities to the target/query set Q)")
        _check_kernel("query_kernel", query_kernel)
        if query_kernel.shape[1] == 0:
            raise ValueError("query_kernel has no columns: the query set Q is empty")
        eta = _check_param("eta", eta)
        if name == "flmi":
            if query_kernel.shape[0] != kernel.shape[0]:
                raise ValueError(
                    f"flmi: query_kernel must be (n_cover, n_query) = ({kernel.shape[0]}, n_query) to "
                    f"match kernel {kernel.shape}, got {query_kernel.shape}"
                )
            return FacilityLocationMutualInformation(to_csc(kernel), query_kernel, eta)
        if kernel is not None and query_kernel.shape[0] != kernel.shape[1]:
            raise ValueError(
                f"flvmi: query_kernel must be (n_candidates, n_query) = ({kernel.shape[1]}, n_query) to "
                f"match kernel {kernel.shape}, got {query_kernel.shape}"
            )
        return FacilityLocationVariantMutualInformation(query_kernel, eta)

    if name == "flcg":
        if private_kernel is None:
            raise ValueError(
                "flcg needs private_kernel (similarities to the previously used set P)"
            )
        _check_kernel("private_kernel", private_kernel)
        if private_kernel.shape[1] == 0:
            raise ValueError("private_kernel has no columns: the private set P is empty")
        if private_kernel.shape[0] != kernel.shape[0]:
            raise ValueError(
                f"flcg: private_kernel must be (n_cover, n_private) = ({kernel.shape[0]}, n_private) to "
                f"match kernel {kernel.shape}, got {private_kernel.shape}"
            )
        return FacilityLocationConditionalGain(
            to_csc(kernel), private_kernel, _check_param("nu", nu)
        )

    if name == "graph_cut":
        if kernel.shape[0] != kernel.shape[1]:
            raise ValueError(
                f"graph_cut needs a square kernel (n, n) over the candidates, got {kernel.shape}"
            )
        return GraphCut(to_csc(kernel), _check_param("lam", lam))
    return FacilityLocation(to_csc(kernel))


def _check_initial(initial_subset, n: int) -> np.ndarray | None:
    if initial_subset is None:
        return None
    init = np.asarray(initial_subset)
    if init.size == 0:
        return None
    if init.ndim != 1 or not np.issubdtype(init.dtype, np.integer):
        raise ValueError("initial_subset must be a 1-D sequence of candidate indices")
    if init.min() < 0 or init.max() >= n:
        raise ValueError(f"initial_subset has indices outside [0, {n})")
    if np.unique(init).size != init.size:
        raise ValueError("initial_subset has duplicate indices")
    return init.astype(np.int64)


def _check_costs(costs, n: int) -> np.ndarray | None:
    if costs is None:
        return None
    c = np.asarray(costs, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"costs must have one value per candidate, shape ({n},), got {c.shape}")
    if not np.isfinite(c).all() or (c <= 0).any():
        raise ValueError("costs must be finite and > 0")
    return c


def select(
    kernel: Kernel | None,
    budget: BudgetSpec,
    function: str = "facility_location",
    optimizer: str = "lazy",
    query_kernel: Kernel | None = None,
    private_kernel: Kernel | None = None,
    eta: float = 1.0,
    nu: float = 1.0,
    seed: int = 0,
    costs: np.ndarray | None = None,
    initial_subset: np.ndarray | list[int] | None = None,
    *,
    lam: float = 0.5,
    epsilon: float = 0.01,
    backend: str = "numba",
    memory_evals: int = STOCHASTIC_MEMORY_EVALS,
    modular: np.ndarray | None = None,
) -> SelectionResult:
    """Pick a subset of candidates by greedy submodular maximisation.

    Kernels are numpy arrays or scipy sparse matrices (a CSR kNN kernel is the normal case) with
    finite similarities >= 0, ideally in [0, 1]. Missing sparse entries mean similarity 0.

    kernel: ``(n_cover, n_candidates)``. ``kernel[i, a]`` = how well candidate ``a`` represents
        item ``i``; rows are the items to be covered, columns the candidates that can be picked.
        For DELIFT both are the same pool: square, the diagonal saying how well an item covers
        itself (1 for embedding kernels; see ``curator.scoring.kernels`` for utility
        kernels). Graph cut needs it
        square. For ``flvmi`` it is only used to check shapes and may be None.
    budget: a count (``100``, ``"100"``), a fraction of the candidates (``0.3``) or a percentage
        (``"30%"``); see :func:`parse_budget`. With ``costs`` it is a total cost instead
        (a number, or ``"30%"`` of the whole pool's cost); see :func:`parse_cost_budget`.
        The initial subset does not count against it.
    function: "facility_location" (``sum_i max_{a in A} S[i, a]``), "flmi" (submodlib's FLMI,
        ``sum_i min(max_{a in A} S[i, a], eta * max_{q in Q} Q[i, q])``), "flvmi" (the DELIFT
        paper's form, ``sum_{q in Q} max_{a in A} Q[a, q] + eta * sum_{a in A} max_{q in Q} Q[a, q]``),
        "flcg" (``sum_i max(max_{a in A} S[i, a] - nu * max_{p in P} P[i, p], 0)``) or
        "graph_cut" (``sum_{i, a in A} S[i, a] - lam * sum_{a, b in A} S[a, b]``); aliases in
        ``FUNCTION_ALIASES`` ("fl", "fl2mi", "gc", ...).
    optimizer: "lazy" (exact greedy, fast), "naive" (exact greedy, the reference) or
        "stochastic" (samples ``n / k * ln(1 / epsilon)`` candidates per pick; seeded by ``seed``;
        ``memory_evals`` lazy re-checks of earlier evaluations may compete with each sample, 0
        turns that off).
    query_kernel: the target set Q. For "flmi": ``(n_cover, n_query)``, ``Q[i, q]`` between
        covered item ``i`` and query ``q`` (submodlib's ``query_sijs``). For "flvmi":
        ``(n_candidates, n_query)``, ``Q[a, q]`` between candidate ``a`` and query ``q``. With a
        square kernel both are ``(n, n_query)``, as in submodlib.
    private_kernel: the previously used set P, for "flcg": ``(n_cover, n_private)``,
        ``P[i, p]`` between covered item ``i`` and private item ``p`` (submodlib's ``private_sijs``).
    eta: FLMI/FLVMI query weight; nu: FLCG privacy hardness; lam: graph cut's lambda
        (monotone for ``lam <= 0.5``). All must be >= 0.
    costs: ``(n_candidates,)`` positive costs (e.g. tokens). Turns on cost-aware greedy: picks by
        gain / cost within the cost budget, then keeps the better of that set and the best single
        candidate that fits.
    initial_subset: candidate indices already selected (e.g. a previous stage's subset); gains
        are conditioned on them and they are never picked again.
    backend: "numba" (compiled, default) or "numpy" (the slow reference the tests compare to).
    modular: ``(n_candidates,)`` values >= 0 added to the function as ``sum_{a in A} m[a]``
        (a prior on the candidates, such as the quality prior's ``lambda * q``). A modular
        term keeps the function monotone submodular, so greedy keeps its guarantee; gains
        and the objective include it.

    Raises ValueError on a bad function or optimizer name, shape mismatch, empty query or
    private set, non-finite or negative similarities, or a bad budget.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not 0 < float(epsilon) < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    f = build_function(
        function,
        kernel,
        query_kernel=query_kernel,
        private_kernel=private_kernel,
        eta=eta,
        nu=nu,
        lam=lam,
    )
    n = f.n_candidates
    if modular is not None:
        m = np.asarray(modular, dtype=np.float64)
        if m.shape != (n,):
            raise ValueError(f"modular must have one value per candidate, shape ({n},), "
                             f"got {m.shape}")
        if not np.isfinite(m).all() or (m < 0).any():
            raise ValueError("modular must be finite and >= 0 (it keeps the function monotone)")
        f.modular = np.ascontiguousarray(f.modular + m)
    init = _check_initial(initial_subset, n)
    costs_ = _check_costs(costs, n)
    n_available = n - (0 if init is None else init.size)

    if costs_ is None:
        max_picks = parse_budget(budget, n)
        if max_picks > n_available:
            raise ValueError(
                f"budget {max_picks} is larger than the {n_available} candidates not in initial_subset"
            )
        cost_budget = None
    else:
        cost_budget = parse_cost_budget(budget, float(costs_.sum()))
        max_picks = n_available

    picks = maximize(
        f,
        max_picks,
        optimizer=optimizer,
        costs=costs_,
        cost_budget=cost_budget,
        initial_subset=init,
        seed=seed,
        epsilon=epsilon,
        backend=backend,
        memory_evals=memory_evals,
    )
    chosen = picks.ranking if init is None else np.concatenate([init, picks.ranking])
    evaluate = f.evaluate if backend == "numpy" else f.evaluate_jit
    return SelectionResult(
        ranking=picks.ranking,
        gains=picks.gains,
        objective=evaluate(chosen),
        initial_objective=0.0 if init is None else evaluate(init),
        function=f.name,
        optimizer=optimizer,
        n_evaluations=picks.n_evaluations,
        cost=None if costs_ is None else float(costs_[picks.ranking].sum()),
        singleton=picks.singleton,
    )
