"""Against the reference libraries: submodlib-py 0.0.3 (all functions) and apricot (FL).

submodlib computes in single precision inside C++, so values agree to about 1e-7 relative;
rankings are compared up to the first pick where our own top two gains are a near tie
(there a float32 rounding may legitimately pick the other one).
"""

from __future__ import annotations

import numpy as np
import pytest

from curator.selection import build_function, select

submodlib = pytest.importorskip("submodlib")
from submodlib.functions.facilityLocation import FacilityLocationFunction  # noqa: E402
from submodlib.functions.facilityLocationConditionalGain import (  # noqa: E402
    FacilityLocationConditionalGainFunction,
)
from submodlib.functions.facilityLocationMutualInformation import (  # noqa: E402
    FacilityLocationMutualInformationFunction,
)
from submodlib.functions.facilityLocationVariantMutualInformation import (  # noqa: E402
    FacilityLocationVariantMutualInformationFunction,
)
from submodlib.functions.graphCut import GraphCutFunction  # noqa: E402

RTOL = 1e-5


def _kernel(rng, n):
    """A random symmetric similarity kernel in [0, 1] with unit diagonal, like DELIFT's."""
    x = rng.normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = (x @ x.T + 1.0) / 2.0  # cosine similarity mapped to [0, 1]
    np.fill_diagonal(s, 1.0)
    return s


def _no_tie_prefix(f, ranking, rel=1e-6):
    """(length of the prefix of ``ranking`` in which every pick beat the runner-up clearly,
    whether the tie that ended it is among zero gains, i.e. the function is saturated)."""
    f.initialize(None)
    chosen = np.zeros(f.n_candidates, dtype=bool)
    for t, j in enumerate(ranking):
        cand = np.flatnonzero(~chosen)
        g = np.sort(f.gains(cand))[::-1]
        if g.size > 1 and g[0] - g[1] <= rel * max(1.0, abs(g[0])):
            return t, abs(g[0]) <= 1e-9
        f.update(int(j))
        chosen[j] = True
    return len(ranking), False


def _compare(ours, theirs, f):
    their_rank = np.array([j for j, _ in theirs])
    their_gain = np.array([g for _, g in theirs])
    prefix, saturated = _no_tie_prefix(f, ours.ranking)
    assert prefix >= 2, "too many near ties to compare"
    np.testing.assert_array_equal(ours.ranking[:prefix], their_rank[:prefix])
    np.testing.assert_allclose(ours.gains[:prefix], their_gain[:prefix], rtol=RTOL, atol=1e-6)
    if prefix == len(ours.ranking) or saturated:
        # after a tie among zero gains every later gain is zero on both sides
        assert ours.objective == pytest.approx(float(their_gain.sum()), rel=RTOL)
    return prefix


CASES = [(0, 30, 10), (1, 120, 40), (2, 300, 60)]  # (seed, n, budget)


@pytest.mark.parametrize("seed,n,budget", CASES)
@pytest.mark.parametrize(
    "optimizer,their_optimizer", [("naive", "NaiveGreedy"), ("lazy", "LazyGreedy")]
)
def test_facility_location_matches_submodlib(seed, n, budget, optimizer, their_optimizer):
    S = _kernel(np.random.default_rng(seed), n)
    ours = select(S, budget, "facility_location", optimizer)
    fl = FacilityLocationFunction(n=n, mode="dense", sijs=S, separate_rep=False)
    theirs = fl.maximize(budget=budget, optimizer=their_optimizer, show_progress=False)
    _compare(ours, theirs, build_function("facility_location", S))
    assert ours.objective == pytest.approx(fl.evaluate(set(ours.ranking.tolist())), rel=RTOL)


@pytest.mark.parametrize("seed,n,budget", CASES)
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_flmi_matches_submodlib(seed, n, budget, eta):
    rng = np.random.default_rng(seed)
    S = _kernel(rng, n)
    Q = rng.random((n, 7))  # (n_cover, n_query)
    ours = select(S, budget, "flmi", "lazy", query_kernel=Q, eta=eta)
    fn = FacilityLocationMutualInformationFunction(
        n=n, num_queries=7, data_sijs=S, query_sijs=Q, magnificationEta=eta
    )
    theirs = fn.maximize(budget=budget, optimizer="NaiveGreedy", show_progress=False)
    _compare(ours, theirs, build_function("flmi", S, query_kernel=Q, eta=eta))
    assert ours.objective == pytest.approx(fn.evaluate(set(ours.ranking.tolist())), rel=RTOL)


@pytest.mark.parametrize("seed,n,budget", CASES)
@pytest.mark.parametrize("eta", [1.0, 3.0])
def test_flvmi_matches_submodlib(seed, n, budget, eta):
    rng = np.random.default_rng(seed)
    S = _kernel(rng, n)
    Q = rng.random((n, 9))  # (n_candidates, n_query)
    ours = select(S, budget, "flvmi", "lazy", query_kernel=Q, eta=eta)
    fn = FacilityLocationVariantMutualInformationFunction(
        n=n, num_queries=9, query_sijs=Q, queryDiversityEta=eta
    )
    theirs = fn.maximize(budget=budget, optimizer="NaiveGreedy", show_progress=False)
    _compare(ours, theirs, build_function("flvmi", S, query_kernel=Q, eta=eta))
    assert ours.objective == pytest.approx(fn.evaluate(set(ours.ranking.tolist())), rel=RTOL)


@pytest.mark.parametrize("seed,n,budget", CASES)
@pytest.mark.parametrize("nu", [1.0, 0.5])
def test_flcg_matches_submodlib(seed, n, budget, nu):
    rng = np.random.default_rng(seed)
    S = _kernel(rng, n)
    P = rng.random((n, 5)) * 0.9  # (n_cover, n_private)
    ours = select(S, budget, "flcg", "lazy", private_kernel=P, nu=nu)
    fn = FacilityLocationConditionalGainFunction(
        n=n, num_privates=5, data_sijs=S, private_sijs=P, privacyHardness=nu
    )
    theirs = fn.maximize(budget=budget, optimizer="NaiveGreedy", show_progress=False)
    _compare(ours, theirs, build_function("flcg", S, private_kernel=P, nu=nu))
    assert ours.objective == pytest.approx(fn.evaluate(set(ours.ranking.tolist())), rel=RTOL)


@pytest.mark.parametrize("seed,n,budget", CASES)
@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
def test_graph_cut_matches_submodlib(seed, n, budget, lam):
    S = _kernel(np.random.default_rng(seed), n)
    ours = select(S, budget, "graph_cut", "lazy", lam=lam)
    fn = GraphCutFunction(n=n, mode="dense", lambdaVal=lam, ggsijs=S)
    theirs = fn.maximize(budget=budget, optimizer="NaiveGreedy", show_progress=False)
    _compare(ours, theirs, build_function("graph_cut", S, lam=lam))
    assert ours.objective == pytest.approx(fn.evaluate(set(ours.ranking.tolist())), rel=RTOL)


def test_objective_matches_submodlib_evaluate_on_random_sets():
    rng = np.random.default_rng(7)
    n = 60
    S = _kernel(rng, n)
    Q = rng.random((n, 4))
    P = rng.random((n, 3))
    ours = {
        "fl": build_function("facility_location", S),
        "flmi": build_function("flmi", S, query_kernel=Q, eta=0.8),
        "flvmi": build_function("flvmi", S, query_kernel=Q, eta=0.8),
        "flcg": build_function("flcg", S, private_kernel=P, nu=0.7),
        "gc": build_function("graph_cut", S, lam=0.4),
    }
    theirs = {
        "fl": FacilityLocationFunction(n=n, mode="dense", sijs=S, separate_rep=False),
        "flmi": FacilityLocationMutualInformationFunction(
            n=n, num_queries=4, data_sijs=S, query_sijs=Q, magnificationEta=0.8
        ),
        "flvmi": FacilityLocationVariantMutualInformationFunction(
            n=n, num_queries=4, query_sijs=Q, queryDiversityEta=0.8
        ),
        "flcg": FacilityLocationConditionalGainFunction(
            n=n, num_privates=3, data_sijs=S, private_sijs=P, privacyHardness=0.7
        ),
        "gc": GraphCutFunction(n=n, mode="dense", lambdaVal=0.4, ggsijs=S),
    }
    for _ in range(5):
        subset = rng.choice(n, size=int(rng.integers(1, n)), replace=False)
        for key, f in ours.items():
            expected = theirs[key].evaluate(set(subset.tolist()))
            assert f.evaluate(subset) == pytest.approx(expected, rel=RTOL), key
            assert f.evaluate_jit(subset) == pytest.approx(expected, rel=RTOL), key


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_facility_location_matches_apricot(optimizer):
    apricot = pytest.importorskip("apricot")
    S = _kernel(np.random.default_rng(3), 150)
    ours = select(S, 30, "facility_location", optimizer)
    # apricot's rows are candidates (X[candidate, covered]): hand it the transpose.
    sel = apricot.FacilityLocationSelection(30, metric="precomputed", optimizer=optimizer)
    sel.fit(np.ascontiguousarray(S.T))
    np.testing.assert_array_equal(ours.ranking, sel.ranking)
    np.testing.assert_allclose(ours.gains, sel.gains, rtol=1e-9)
