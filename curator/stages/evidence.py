"""DELIFT's evidence loop: greedy on the utility kernels, and where it runs out of scored
pairs before the budget is filled, score more pairs where the kernel is blind and select
again; harmful examples left out; a tail that stays at zero gain ordered by utility.

Two kinds of harm evidence (``spec.harm``). "mean": an example whose mean utility to the
targets it was scored with is negative makes them worse in context. "fit" (with
"mean+fit"): an example whose own response its most similar pool examples make *less*
likely on average, u(i | j) < 0 for the j most like i, contradicts its neighbourhood -- the
mark of a wrong, swapped or other-family response, which as an in-context example still
looks helpful (its prompt carries the format). Pool-by-pool stages have those pairs in their
kNN graph already; for the task stage (targets x pool) the loop scores a few "fit" pairs for
each candidate greedy picks (FIT_PAIRS each, most similar first) and selects again.

The decisions (which rows need cover, which pairs to score, what is harmful, the tail's
order) are pure functions in ``curator.selection.evidence_rules``; this module runs them against
the store and the model for one stage.

Killed and rerun, a stage must reach the same selection and score the same pairs. Each
round records the pairs it asks for (a ``select-evidence`` run keyed by the stage's key)
before scoring them; a rerun leaves the pairs earlier attempts asked for out of its kernels
until its own rounds ask for them again, so every round sees what it saw the first time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Set
from typing import Any

import numpy as np
import scipy.sparse as sp

from curator.scoring.jobs import UtilitySummary, ensure_embeddings, score_pair_list, utility_config
from curator.selection.evidence_rules import (
    column_mean_utility,
    evidence_order,
    first_zero_gain,
    harmful_columns,
    propose_pairs,
    rows_by_need,
    without_columns,
)
from curator.stages.baselines import greedy
from curator.stages.context import StageContext, ids
from curator.store.scores import existing_pairs, load_utilities

# At most this many rounds of on-demand scoring per selection (each round re-runs greedy).
EVIDENCE_ROUNDS = 8
# Pairs asked for per pick still missing, per round: about half of measured pairs help.
PAIRS_PER_MISSING_PICK = 4
# Rounds in a row that bought no informative pick before the loop gives up.
PATIENCE = 2
# Fit pairs scored per picked candidate that lacks them (the candidate as the target, its
# most similar pool examples in context), and at most this many fit rounds per selection.
FIT_PAIRS = 3
FIT_ROUNDS = 6
# A mean over fewer scored pairs than this is not evidence of harm.
MIN_HARM_PAIRS = 2
# The runs-table kind that records each round's pairs (what makes a rerun replay the rounds).
RUN_KIND = "select-evidence"


class EvidenceLoop:
    """One DELIFT stage's selection, asking for pairs as it goes (see module docstring)."""

    def __init__(self, ctx: StageContext, function: str, kernels: dict[str, Any],
                 runs: list[UtilitySummary],
                 rescore: Callable[[Set[tuple[str, str]]], dict[str, Any]]) -> None:
        self.ctx, self.function, self.kernels, self.runs = ctx, function, kernels, runs
        self.rescore = rescore
        self.chash = utility_config(ctx.lm, ctx.options).config_hash()
        self.pool_ids = ctx.pool_ids
        # rows greedy covers, as samples: the targets for FLVMI, the pool otherwise
        self.row_samples = ctx.pools.target if function == "flvmi" else ctx.pools.pool
        self.row_ids = ids(self.row_samples)
        self.graph_pairs = sum(r.n_pairs for r in runs)
        self.cap = int(round(ctx.options.expand * self.graph_pairs))
        self.extra = self.rounds = self.filled = 0
        self.fit_pairs = self.fit_rounds = 0
        self.harmful = np.zeros(0, dtype=np.int64)
        self.unfit = np.zeros(0, dtype=np.int64)
        self.mean = np.full(len(self.pool_ids), np.nan)
        self.fit = np.full(len(self.pool_ids), np.nan)
        self.fit_count = np.zeros(len(self.pool_ids), dtype=np.int64)
        self._emb: dict[str, np.ndarray] | None = None
        # pairs earlier (killed) attempts of this stage asked for, and those asked for now
        self.earlier = self._earlier_requests()
        self.asked: set[tuple[str, str]] = set()
        if self.earlier:
            self.kernels = self.rescore(self.excluded())

    def excluded(self) -> set[tuple[str, str]]:
        """Pairs an earlier attempt asked for that this one has not asked for (yet)."""
        return self.earlier - self.asked

    def _earlier_requests(self) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for run in self.ctx.store.runs(limit=100_000, kind=RUN_KIND):
            config = json.loads(run["config"] or "{}")
            if config.get("key") == self.ctx.key and config.get("utility_config") == self.chash:
                out |= {(t, e) for t, e in config.get("pairs", [])}
        return out

    def run(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(ranking, gains, objective) of the stage's selection."""
        ctx, n_select = self.ctx, self.ctx.n_select
        best_t, stale = -1, 0
        while True:
            self._weigh_harm()
            masked = self._masked()
            result = greedy(ctx, masked, self.function, n_select)
            ranking = np.asarray(result.ranking)
            gains = self._utility_gains(ranking, np.asarray(result.gains, dtype=float))
            t = first_zero_gain(gains)
            if self._check_fit(ranking[:t]):
                continue                 # picks lacked fit evidence: scored it, select again
            # stop when the budget is filled by measured gains, the pair budget is spent, the
            # rounds are used up, or PATIENCE rounds in a row bought no informative pick
            stale = stale + 1 if t <= best_t else 0
            best_t = max(best_t, t)
            if t >= n_select or self.extra >= self.cap or self.rounds >= EVIDENCE_ROUNDS \
                    or stale >= PATIENCE:
                break
            pairs = self._proposals(masked, ranking[:t], n_select - t)
            if not pairs:
                break
            self._score(pairs, {"round": self.rounds + 1})
            self.extra += len(pairs)
            self.rounds += 1
        t = first_zero_gain(gains)
        if t < n_select:
            rest = np.setdiff1d(np.arange(len(self.pool_ids)), ranking[:t])
            tail = evidence_order(rest, self.mean, self.harmful, seed=ctx.spec.seed)
            tail = tail[:n_select - t]
            ranking = np.concatenate([ranking[:t], tail])
            gains = np.concatenate([gains[:t], np.zeros(len(tail))])
            self.filled = len(tail)
        objective = float(result.objective)
        if ctx.modular is not None:
            # the utilities' objective, as the gains are: the prior's modular part is its own
            objective -= float(ctx.modular[np.asarray(result.ranking)].sum())
        return ranking, gains, objective

    def _utility_gains(self, ranking: np.ndarray, gains: np.ndarray) -> np.ndarray:
        """The gains less the quality prior's modular term: what the utilities measured,
        so a pick the utilities say nothing about still counts as a zero-gain pick."""
        if self.ctx.modular is None or not len(ranking):
            return gains
        pure = gains - self.ctx.modular[ranking]
        return np.where(np.abs(pure) <= 1e-9 * max(1.0, float(np.abs(gains).max())), 0.0, pure)

    def _score(self, pairs: list[tuple[str, str]], label: dict[str, Any]) -> None:
        """Score ``pairs`` (recorded first, so a rerun after a kill replays the round) and
        rebuild the kernels."""
        ctx = self.ctx
        run_id = ctx.store.start_run(RUN_KIND, ctx.dataset, {
            "key": ctx.key, "utility_config": self.chash, **label, "pairs": pairs})
        self.asked |= set(pairs)
        self.runs.append(score_pair_list(
            ctx.store, ctx.lm, [*self.row_samples, *ctx.pools.pool], pairs, ctx.options,
            dataset=ctx.dataset, progress=ctx.progress, echo=ctx.echo, engine=ctx.engine))
        ctx.store.finish_run(run_id, "done", result={"pairs": len(pairs)})
        self.kernels = self.rescore(self.excluded())

    def _check_fit(self, head: np.ndarray) -> bool:
        """With ``harm: mean+fit``, score fit pairs for the picks in ``head`` that have fewer
        than MIN_HARM_PAIRS of them (at most FIT_ROUNDS times); True when pairs were scored."""
        if self.ctx.spec.harm != "mean+fit" or self.fit_rounds >= FIT_ROUNDS or not len(head):
            return False
        probe = np.asarray([c for c in head if self.fit_count[c] < MIN_HARM_PAIRS],
                           dtype=np.int64)
        if not len(probe):
            return False
        pairs = self._fit_proposals(probe)
        if not pairs:
            return False
        self._score(pairs, {"fit_round": self.fit_rounds + 1})
        self.fit_pairs += len(pairs)
        self.fit_rounds += 1
        return True

    def _fit_proposals(self, probe: np.ndarray) -> list[tuple[str, str]]:
        """For each candidate in ``probe``, pairs (candidate as the target, one of its most
        similar pool examples) never scored, up to FIT_PAIRS scored in all."""
        ctx, pool_ids = self.ctx, self.pool_ids
        c_pos = {s: j for j, s in enumerate(pool_ids)}
        hidden = self.excluded()
        scored = {(c_pos[t], c_pos[e])
                  for t, e in existing_pairs(ctx.store, ctx.lm.fingerprint, self.chash,
                                             [pool_ids[c] for c in probe])
                  if e in c_pos and t in c_pos and (t, e) not in hidden}
        emb = self._embeddings()
        pool_emb = np.stack([emb[i] for i in pool_ids])
        out: list[tuple[str, str]] = []
        for c in probe.tolist():
            want = max(1, FIT_PAIRS - int(self.fit_count[c]))
            got = propose_pairs(pool_emb, pool_emb, [c], np.arange(len(pool_ids)), scored,
                                want, [(c, c)])
            out += [(pool_ids[r], pool_ids[e]) for r, e in got]
        return out

    def record(self) -> dict[str, Any]:
        """What the selection's config says about the loop."""
        out: dict[str, Any] = {
            "harm": self.ctx.spec.harm, "harmful_excluded": int(len(self.harmful)),
            "unfit_excluded": int(len(self.unfit)),
            "evidence": {"graph_pairs": int(self.graph_pairs), "extra_pairs": int(self.extra),
                         "rounds": int(self.rounds), "expand": self.ctx.options.expand,
                         "fit_pairs": int(self.fit_pairs), "fit_rounds": int(self.fit_rounds)},
            "zero_gain_picks": int(self.filled)}
        if self.filled:
            out["zero_gain_refilled"] = int(self.filled)
        return out

    def notes(self) -> list[str]:
        out = []
        if self.extra:
            out.append(f"scored {self.extra} more pairs in {self.rounds} round(s) where the "
                       f"kernel had no evidence ({self.extra / max(self.graph_pairs, 1):.0%} "
                       f"of the graph's {self.graph_pairs})")
        if len(self.harmful):
            why = "negative mean utility over their scored pairs"
            if len(self.unfit):
                why += (f"; {len(self.unfit)} of them because the examples most like them made "
                        "their own response less likely")
            out.append(f"left out {len(self.harmful)} harmful example(s): {why}")
        if self.fit_pairs:
            out.append(f"scored {self.fit_pairs} fit pairs (picks as targets, their most "
                       f"similar examples in context) in {self.fit_rounds} round(s)")
        if self.filled:
            out.append(f"{self.filled} picks came at zero gain (no scored pair covered more) "
                       "and were ordered by the candidates' mean utility")
        return out

    # -- steps -------------------------------------------------------------------------------

    def _weigh_harm(self) -> None:
        """Each candidate's mean utility (in units of the largest positive one) over its valid
        scored pairs with the stage's rows; the harmful ones when ``harm`` is "mean"."""
        ctx = self.ctx
        rows = load_utilities(ctx.store, ctx.lm.fingerprint, self.chash,
                              sorted(set(self.row_ids) | set(self.pool_ids)), self.pool_ids)
        c_pos = {s: j for j, s in enumerate(self.pool_ids)}
        ok = rows.valid & ~np.isnan(rows.utility)
        hidden = self.excluded()
        if hidden and len(rows.utility):
            ok &= np.array([(t, e) not in hidden
                            for t, e in zip(rows.target_id, rows.example_id, strict=True)],
                           dtype=bool)
        if len(rows.utility):
            ok &= np.array([t != e for t, e in zip(rows.target_id, rows.example_id, strict=True)],
                           dtype=bool)
        u = rows.utility[ok]
        scale = float(u[u > 0].max()) if (u > 0).any() else 1.0
        cols = [c_pos[e] for e, k in zip(rows.example_id, ok, strict=True) if k]
        self.mean, count = column_mean_utility(cols, u, len(self.pool_ids), scale)
        # fit: each pool candidate as the *target*, over the pool examples scored with it
        as_target = [c_pos.get(t, -1) for t, k in zip(rows.target_id, ok, strict=True) if k]
        mine = np.asarray([p >= 0 for p in as_target], dtype=bool)
        self.fit, self.fit_count = column_mean_utility(
            np.asarray(as_target, dtype=np.int64)[mine], u[mine], len(self.pool_ids), scale)
        harmful = harmful_columns(self.mean, count, MIN_HARM_PAIRS) \
            if ctx.spec.harm in ("mean", "mean+fit") else np.zeros(0, dtype=np.int64)
        self.unfit = harmful_columns(self.fit, self.fit_count, MIN_HARM_PAIRS) \
            if ctx.spec.harm == "mean+fit" else np.zeros(0, dtype=np.int64)
        self.unfit = np.setdiff1d(self.unfit, harmful)
        self.harmful = np.union1d(harmful, self.unfit).astype(np.int64)

    def _masked(self) -> dict[str, Any]:
        """The kernels with the harmful candidates' entries removed: they can only be picked
        at zero gain, last in the evidence-ordered tail."""
        if not len(self.harmful):
            return self.kernels
        out = dict(self.kernels)
        if out.get("kernel") is not None:
            out["kernel"] = without_columns(out["kernel"], self.harmful, axis=1)
        if self.function == "flvmi" and out.get("query_kernel") is not None:
            out["query_kernel"] = without_columns(out["query_kernel"], self.harmful, axis=0)
        return out

    def _rows_in_need(self, kernels: dict[str, Any], head: np.ndarray) -> np.ndarray:
        """Rows whose credit new pairs could still raise, least covered first."""
        spec = self.ctx.spec
        if self.function == "flvmi":
            # rows are the targets: Q is (n_pool, n_query), a target's coverage its column max
            return rows_by_need(kernels["query_kernel"].T, head, seed=spec.seed)
        kernel = kernels["kernel"]
        if self.function == "flcg":
            prev = np.asarray(kernels["private_kernel"].max(axis=1).todense()).ravel()
            return rows_by_need(kernel, head, floor=spec.nu * prev, seed=spec.seed)
        if self.function == "flmi":
            q = kernels["query_kernel"]
            qmax = np.asarray(q.max(axis=1).todense()).ravel() if sp.issparse(q) \
                else np.asarray(q).max(axis=1)
            return rows_by_need(kernel, head, ceiling=spec.eta * qmax, seed=spec.seed)
        return rows_by_need(kernel, head, seed=spec.seed)

    def _proposals(self, kernels: dict[str, Any], head: np.ndarray,
                   missing: int) -> list[tuple[str, str]]:
        """About PAIRS_PER_MISSING_PICK pairs per missing pick, spread over the rows in most
        need, each with its most similar unscored candidates (not picked, not harmful)."""
        ctx = self.ctx
        want = min(self.cap - self.extra, PAIRS_PER_MISSING_PICK * missing)
        probe = self._rows_in_need(kernels, head)
        if want <= 0 or not len(probe):
            return []
        per_row = int(np.clip(-(-want // len(probe)), 1, ctx.options.k))
        probe = probe[:-(-want // per_row)]
        allowed = np.setdiff1d(np.arange(len(self.pool_ids)),
                               np.concatenate([head, self.harmful]).astype(np.int64))
        r_pos = {s: i for i, s in enumerate(self.row_ids)}
        c_pos = {s: j for j, s in enumerate(self.pool_ids)}
        hidden = self.excluded()
        scored = {(r_pos[t], c_pos[e])
                  for t, e in existing_pairs(ctx.store, ctx.lm.fingerprint, self.chash,
                                             self.row_ids)
                  if e in c_pos and (t, e) not in hidden}
        same = [(i, c_pos[r]) for i, r in enumerate(self.row_ids) if r in c_pos]
        emb = self._embeddings()
        # Task stage above scoring.dense_target (FLVMI: rows are the targets): the candidates
        # a target is measured with are chosen by similarity plus the quality prior's term,
        # so the model's own signal, not embeddings alone, decides which pairs exist.
        bonus = ctx.modular if self.function == "flvmi" else None
        proposed = propose_pairs(np.stack([emb[i] for i in self.row_ids]),
                                 np.stack([emb[i] for i in self.pool_ids]), probe, allowed,
                                 scored, per_row, same, col_bonus=bonus)[:want]
        return [(self.row_ids[r], self.pool_ids[c]) for r, c in proposed]

    def _embeddings(self) -> dict[str, np.ndarray]:
        if self._emb is None:
            pools = self.ctx.pools
            everyone = {s.sample_id: s for s in [*pools.pool, *pools.target]}
            emb, _ = ensure_embeddings(self.ctx.store, self.ctx.lm, list(everyone.values()),
                                       batch_size=self.ctx.options.batch_size,
                                       engine=self.ctx.engine)
            self._emb = {sid: emb[i] for i, sid in enumerate(everyone)}
        return self._emb
