"""Stage selection: join scoring and selection for one fine-tuning stage, store the result.

This is the workflow layer the CLI, the recipes and the scheduler call. It reads pools from
the store, scores what is missing (``curator.scoring.jobs``), builds the kernels for the
stage's function, runs the optimiser (``curator.selection``) and stores the selection with
its provenance.

Stages (DELIFT):
- instruction: facility location over pool x pool utilities;
- task: mutual information with a target set Q (default the paper's FLVMI form, which needs
  only Q x pool utilities; ``flmi`` is submodlib's form and also needs pool x pool);
- continual: conditional gain over the new data D given the previous data P (D x D and
  D x P utilities).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from curator.config import (
    AUTO_HUBS_MAX_SHARE,
    GRADIENT_METHODS,
    ScoringOptions,
    StageSpec,
    config_hash,
)
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.jobs import (
    UtilitySummary,
    ensure_embeddings,
    score_utilities,
    utility_config,
    utility_kernel_from_store,
    utility_scale,
)
from curator.selection import canonical_function, parse_budget, select
from curator.store import NotFound, Store
from curator.store.datasets import load_samples, resolve_version
from curator.store.selections import (
    SelectionRecord,
    find_selection,
    get_selection,
    latest_selection,
    save_selection,
    selection_sample_ids,
)
from curator.store.trash import trashed_ids

MODEL_METHODS = ("delift", "embedding", "rds", "dualsft", "gast", "less")


@dataclass
class StageOutcome:
    selection_id: str
    record: SelectionRecord
    sample_ids: list[str]
    gains: np.ndarray
    scoring: list[UtilitySummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reused: bool = False


@dataclass
class Pools:
    """Who is selected from, who is covered, and what came before."""

    pool: list[Sample]
    version: int
    target: list[Sample] = field(default_factory=list)
    target_ref: str | None = None
    previous: list[Sample] = field(default_factory=list)
    parent: str | None = None
    trashed: list[str] = field(default_factory=list)  # left out of pool/target: in the trash


def resolve_pools(store: Store, dataset: str, spec: StageSpec,
                  previous_selection: str | None = None) -> Pools:
    version = resolve_version(store, dataset, spec.version)
    pool = load_samples(store, dataset, version)
    if not pool:
        raise ValueError(f"{dataset} v{version} has no samples")
    # Samples a person put in the trash are not candidates (nor targets) of a new selection.
    trash = trashed_ids(store, dataset)
    kept = [s for s in pool if s.sample_id not in trash]
    if not kept:
        raise ValueError(f"every sample of {dataset} v{version} is in the trash "
                         f"(curator trash restore {dataset} ...)")
    pools = Pools(kept, version, trashed=sorted(s.sample_id for s in pool
                                                if s.sample_id in trash))
    pool = kept
    if spec.target:
        t_version = resolve_version(store, spec.target, None)
        t_trash = trashed_ids(store, spec.target)
        target = load_samples(store, spec.target, t_version)
        pools.target = [s for s in target if s.sample_id not in t_trash]
        pools.target_ref = f"{spec.target}:{t_version}"
        pools.trashed += sorted(s.sample_id for s in target if s.sample_id in t_trash)
        if not pools.target:
            raise ValueError(f"target set {spec.target} v{t_version} has no rows"
                             + (" outside the trash" if target else ""))
    elif spec.stage == "task":
        raise ValueError("the task stage needs a target set (--target-set DATASET)")
    if spec.stage == "continual":
        parent_id = spec.parent
        if parent_id in (None, "previous", "latest"):
            parent_id = previous_selection
            if parent_id is None:
                # The newest selection made on an earlier version: what was trained before
                # this version's data arrived.
                try:
                    parent_id = latest_selection(store, dataset,
                                                 before_version=version).selection_id
                except NotFound as exc:
                    raise ValueError(
                        "the continual stage needs something previous: select from an earlier "
                        "version first, or pass --parent SELECTION") from exc
        parent = get_selection(store, parent_id)
        prev_ids = set(selection_sample_ids(store, parent_id))
        pools.parent = parent_id
        by_id = {s.sample_id: s for s in load_samples(store, parent.dataset, parent.version)}
        pools.previous = [by_id[i] for i in selection_sample_ids(store, parent_id) if i in by_id]
        if spec.pool == "new":
            seen = {s.sample_id for s in load_samples(store, parent.dataset, parent.version)}
            pools.pool = [s for s in pool if s.sample_id not in seen]
        else:
            pools.pool = [s for s in pool if s.sample_id not in prev_ids]
        if not pools.pool:
            raise ValueError(f"nothing new in {dataset} v{version} since selection {parent_id} "
                             f"(v{parent.version})")
        if not pools.previous:
            raise ValueError(f"selection {parent_id} has no members to condition on")
    return pools


def trash_notes(pools: Pools) -> list[str]:
    return [f"{len(pools.trashed)} trashed sample(s) left out"] if pools.trashed else []


def _ids(samples: list[Sample]) -> list[str]:
    return [s.sample_id for s in samples]


def _query_k(options: ScoringOptions, n_select: int, n_query: int, n_pool: int) -> int:
    """Neighbours per target for target x pool graphs. ``query_k`` 0 scores every pool
    item against every target (affordable when the target set is small); by default,
    enough that the targets' candidate lists together can fill the budget, at least k."""
    if options.query_k is not None:
        return n_pool if options.query_k == 0 else min(n_pool, options.query_k)
    return min(n_pool, max(options.k, 2 * -(-n_select // max(n_query, 1))))


def _embedding_kernels(store: Store, lm: LoadedModel, pools: Pools, function: str,
                       options: ScoringOptions) -> dict[str, Any]:
    """Cosine kernels from the model's pooled hidden states (the model-independent
    baseline's shapes, the same orientation as the utility kernels)."""
    from curator.scoring.kernels import embedding_kernel

    everyone = {s.sample_id: s for s in [*pools.pool, *pools.target, *pools.previous]}
    emb, _ = ensure_embeddings(store, lm, list(everyone.values()),
                               batch_size=options.batch_size)
    row = {sid: i for i, sid in enumerate(everyone)}
    pool_ids = _ids(pools.pool)
    e_pool = emb[[row[i] for i in pool_ids]]
    k = min(options.k, max(len(pool_ids) - 1, 1))
    out: dict[str, Any] = {}
    if function in ("facility_location", "graph_cut", "flcg", "flmi"):
        out["kernel"] = embedding_kernel(e_pool, pool_ids, k).matrix if len(pool_ids) > 1 \
            else sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    if function in ("flmi", "flvmi"):
        q_ids = _ids(pools.target)
        e_q = emb[[row[i] for i in q_ids]]
        cos = (e_pool @ e_q.T + 1.0) / 2.0                      # (n_pool, n_query)
        out["query_kernel"] = np.clip(cos, 0.0, 1.0).astype(np.float32)
    if function == "flcg":
        p_ids = _ids(pools.previous)
        e_p = emb[[row[i] for i in p_ids]]
        out["private_kernel"] = embedding_kernel(e_pool, pool_ids, min(options.k, len(p_ids)),
                                                 col_emb=e_p, col_ids=p_ids).matrix
    return out


def _utility_kernels(store: Store, lm: LoadedModel, pools: Pools, function: str,
                     options: ScoringOptions, n_select: int, progress: bool,
                     echo: Callable[[str], None] | None, dataset: str,
                     self_coverage: str = "best"
                     ) -> tuple[dict[str, Any], list[UtilitySummary]]:
    """Score the pairs the stage's function reads, then build its kernels."""
    pool, pool_ids = pools.pool, _ids(pools.pool)
    chash = utility_config(lm, options).config_hash()
    fp = lm.fingerprint
    runs: list[UtilitySummary] = []
    out: dict[str, Any] = {}
    if function in ("facility_location", "graph_cut", "flcg", "flmi"):
        if len(pool) > 1:
            runs.append(score_utilities(store, lm, pool, pool, options, dataset=dataset,
                                        progress=progress, echo=echo))
    if function in ("flmi", "flvmi"):
        q = pools.target
        kq = _query_k(options, n_select, len(q), len(pool))
        runs.append(score_utilities(store, lm, q, pool, options, k=kq, dataset=dataset,
                                    progress=progress, echo=echo))
        # FLMI compares pool x pool and Q x pool coverage (min of the two), so both kernels
        # are divided by one scale, the largest positive utility of either; FLVMI has no
        # pool x pool kernel and keeps the query kernel's own scale.
        scale = None
        if function == "flmi":
            scale = max(utility_scale(store, fp, chash, pool_ids, pool_ids),
                        utility_scale(store, fp, chash, _ids(q), pool_ids))
            if len(pool) > 1:
                out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids, pool_ids,
                                                          scale, self_coverage).matrix
        # (n_query, n_pool): how much each pool item helps each target -> transposed below.
        qk = utility_kernel_from_store(store, fp, chash, _ids(q), pool_ids, scale).matrix
        out["query_kernel"] = qk.T.tocsr()
    if function == "flcg":
        prev = pools.previous
        runs.append(score_utilities(store, lm, pool, prev, options, dataset=dataset,
                                    progress=progress, echo=echo))
        scale = max(utility_scale(store, fp, chash, pool_ids, pool_ids),
                    utility_scale(store, fp, chash, pool_ids, _ids(prev)))
        out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids, pool_ids,
                                                  scale, self_coverage).matrix
        out["private_kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids,
                                                          _ids(prev), scale).matrix
        return out, runs
    if "kernel" not in out and function != "flvmi":
        if len(pool) > 1:
            out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids,
                                                      pool_ids,
                                                      self_coverage=self_coverage).matrix
        else:
            out["kernel"] = sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    return out, runs


def _fill_zero_gain_tail(result: Any, fallback: dict[str, Any], n_select: int,
                         spec: StageSpec, function: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Picks made at zero gain carry no information from the utilities (no candidate pair
    covered anything more); re-pick that tail with the embedding kernels, starting from the
    informative picks, instead of taking candidates in index order."""
    ranking, gains = np.asarray(result.ranking), np.asarray(result.gains, dtype=float)
    informative = int(np.argmax(gains <= 1e-12)) if (gains <= 1e-12).any() else len(gains)
    if informative >= len(ranking):
        return ranking, gains, 0
    head = ranking[:informative]
    tail = select(fallback.get("kernel"), n_select - informative, function=function,
                  optimizer=spec.optimizer, query_kernel=fallback.get("query_kernel"),
                  private_kernel=fallback.get("private_kernel"), eta=spec.eta, nu=spec.nu,
                  seed=spec.seed, initial_subset=head if len(head) else None)
    new_rank = np.concatenate([head, np.asarray(tail.ranking)])
    new_gains = np.concatenate([gains[:informative], np.zeros(len(tail.ranking))])
    return new_rank, new_gains, len(tail.ranking)


def rds_ranking(pool_emb: np.ndarray, target_emb: np.ndarray, n_select: int) -> np.ndarray:
    """RDS+ (Ivison et al. 2025): cosine of pooled hidden states to each target point;
    take the best unpicked pool item of each target in turn (round robin) up to the budget."""
    sims = pool_emb @ target_emb.T                 # (n_pool, n_query)
    order = np.argsort(-sims, axis=0, kind="stable")  # per target, pool items best first
    picked: list[int] = []
    taken = np.zeros(len(pool_emb), dtype=bool)
    cursor = np.zeros(target_emb.shape[0], dtype=np.int64)
    while len(picked) < n_select:
        progressed = False
        for q in range(target_emb.shape[0]):
            while cursor[q] < len(pool_emb) and taken[order[cursor[q], q]]:
                cursor[q] += 1
            if cursor[q] < len(pool_emb):
                i = int(order[cursor[q], q])
                taken[i] = True
                picked.append(i)
                progressed = True
                if len(picked) == n_select:
                    break
        if not progressed:
            break
    return np.asarray(picked, dtype=np.int64)


def stage_key(dataset: str, spec: StageSpec, pools: Pools, options: ScoringOptions,
              fingerprint: str | None) -> str:
    """What makes two selections the same: data (pool, target, parent), settings and model.

    Settings added after selections were stored enter the hash only when they differ from
    their default, so upgrading does not make every stored selection look new.
    """
    key: dict[str, Any] = {
        "dataset": dataset, "version": pools.version, "pool": _ids(pools.pool),
        "target": pools.target_ref, "parent": pools.parent,
        "spec": {k: (dataclasses.asdict(v) if k == "gradient" else v)
                 for k, v in vars(spec).items()
                 if k not in ("name", "version", "parent")
                 # only DELIFT reads it: other methods keep their hashes
                 and (k != "self_coverage" or spec.method == "delift")
                 and (k != "gradient" or spec.method == "dualsft")},
        "options": {k: v for k, v in vars(options).items() if not (k == "hubs" and v == 0)},
        "model": fingerprint}
    if spec.method in GRADIENT_METHODS:
        # gradient selections made before cross-fitting, signed masks and GAST's union
        # budget differ from today's: they must not be reused as if identical
        key["gradient_rules"] = 2
    return config_hash(key)


@dataclass
class _Ranked:
    ranking: np.ndarray
    gains: np.ndarray
    objective: float | None
    function: str | None
    runs: list[UtilitySummary] = field(default_factory=list)


def select_stage(store: Store, dataset: str, spec: StageSpec, *,
                 lm: LoadedModel | Callable[[], LoadedModel] | None = None,
                 options: ScoringOptions | None = None, previous_selection: str | None = None,
                 progress: bool = False, echo: Callable[[str], None] | None = None,
                 reuse: bool = True) -> StageOutcome:
    """Select a subset of ``dataset`` for one stage and store it; returns the outcome.

    ``reuse``: when a selection with the same data, settings and model exists, return it
    instead of selecting again (selections are deterministic given their seed and the
    scores in the store: a DELIFT kernel reads every stored pair among its rows and
    columns, including pairs other stages scored; docs/design-notes.md).
    """
    spec.validate("stage")
    options = options or ScoringOptions()
    options.validate()
    started = time.monotonic()
    pools = resolve_pools(store, dataset, spec, previous_selection)
    n_pool = len(pools.pool)
    n_select = parse_budget(spec.budget, n_pool)
    if spec.method in MODEL_METHODS:
        if lm is None:
            raise ValueError(f"method {spec.method} needs a model")
        if callable(lm) and not isinstance(lm, LoadedModel):
            lm = lm()
    fingerprint = lm.fingerprint if isinstance(lm, LoadedModel) else None
    # hub columns serve utility kernels only; "auto" becomes a count here, where the budget
    # is known, so the key and the record say what was scored
    auto_hubs = options.hubs == "auto"
    options = dataclasses.replace(options, hubs=options.resolved_hubs(n_select, n_pool)
                                  if spec.method == "delift" else 0)
    key = stage_key(dataset, spec, pools, options, fingerprint)
    if reuse:
        existing = find_selection(store, dataset, key)
        if existing is not None:
            ids = selection_sample_ids(store, existing.selection_id)
            return StageOutcome(existing.selection_id, existing, ids, np.zeros(len(ids)),
                                [], [f"reused {existing.selection_id}: same data, settings "
                                    "and model"], reused=True)
    if spec.method in GRADIENT_METHODS:
        from curator.gradient_stages import select_by_gradients

        return select_by_gradients(store, dataset, spec, pools, lm, options, n_select,
                                   started=started, spec_hash=key, progress=progress, echo=echo)
    function = canonical_function(spec.resolved_function)
    config: dict[str, Any] = {"spec_hash": key, "function": function,
                              "optimizer": spec.optimizer,
                              "eta": spec.eta, "nu": spec.nu, "seed": spec.seed,
                              "k": options.k, "distance": options.distance,
                              "pool": spec.pool if spec.stage == "continual" else None}
    if options.hubs:
        config["hubs"] = options.hubs
    if pools.trashed:
        config["trashed"] = pools.trashed  # the browser rebuilds the pool without them
    notes: list[str] = trash_notes(pools)
    if auto_hubs and options.hubs:
        notes.append(f"scored the {options.hubs} hub examples against every target as well: "
                     f"the budget ({n_select} of {n_pool}) is at most "
                     f"{AUTO_HUBS_MAX_SHARE:.0%} of the pool (scoring.hubs: auto)")
    if spec.method in ("delift", "embedding"):
        ranked = _rank_by_kernels(store, lm, spec, pools, function, options, n_select, config,
                                  notes, progress, echo, dataset)
    else:
        ranked = _rank_simply(store, lm, spec, pools, options, n_select)
    pool_ids = _ids(pools.pool)
    sample_ids = [pool_ids[i] for i in ranked.ranking]
    record = SelectionRecord(
        dataset=dataset, version=pools.version, stage=spec.stage, method=spec.method,
        budget=spec.budget, n_pool=n_pool, n_selected=len(sample_ids),
        function=ranked.function, objective=ranked.objective,
        model=lm.fingerprint if isinstance(lm, LoadedModel) and spec.method in MODEL_METHODS
        else None, config=config, parent=pools.parent, target=pools.target_ref,
        seconds=round(time.monotonic() - started, 3))
    sel_id = save_selection(store, record, sample_ids, gains=list(ranked.gains))
    return StageOutcome(sel_id, record, sample_ids, np.asarray(ranked.gains), ranked.runs,
                        notes)


def _rank_simply(store: Store, lm: LoadedModel | None, spec: StageSpec, pools: Pools,
                 options: ScoringOptions, n_select: int) -> _Ranked:
    """The baselines without a set function: random, full, RDS+."""
    n_pool = len(pools.pool)
    if spec.method == "random":
        ranking = np.random.default_rng(spec.seed).permutation(n_pool)[:n_select]
        return _Ranked(ranking, np.zeros(n_select), None, None)
    if spec.method == "full":
        return _Ranked(np.arange(n_pool), np.zeros(n_pool), None, None)
    if spec.method == "rds":
        if not pools.target:
            raise ValueError("rds ranks the pool by similarity to a target set: pass a target")
        everyone = {s.sample_id: s for s in [*pools.pool, *pools.target]}
        emb, _ = ensure_embeddings(store, lm, list(everyone.values()),
                                   batch_size=options.batch_size)
        row = {sid: i for i, sid in enumerate(everyone)}
        ranking = rds_ranking(emb[[row[i] for i in _ids(pools.pool)]],
                              emb[[row[s.sample_id] for s in pools.target]], n_select)
        return _Ranked(ranking, np.zeros(len(ranking)), None, "round_robin_cosine")
    raise ValueError(f"unknown method {spec.method!r}")


def _rank_by_kernels(store: Store, lm: LoadedModel, spec: StageSpec, pools: Pools,
                     function: str, options: ScoringOptions, n_select: int,
                     config: dict[str, Any], notes: list[str], progress: bool,
                     echo: Callable[[str], None] | None, dataset: str) -> _Ranked:
    """DELIFT (utility kernels, scored as needed) or its embedding baseline: greedy
    submodular maximisation of the stage's function. Adds to ``config`` and ``notes``."""
    runs: list[UtilitySummary] = []
    if spec.method == "delift":
        kernels, runs = _utility_kernels(store, lm, pools, function, options, n_select,
                                         progress, echo, dataset, spec.self_coverage)
        config["utility_config"] = utility_config(lm, options).config_hash()
        config["self_coverage"] = spec.self_coverage
        # what the kernels held (stored pairs of other stages count too): two selections
        # with equal settings but different store histories differ here
        config["kernel_nnz"] = {name: int(m.nnz) for name, m in kernels.items()
                                if m is not None}
    else:
        kernels = _embedding_kernels(store, lm, pools, function, options)
    result = select(kernels.get("kernel"), n_select, function=function,
                    optimizer=spec.optimizer, query_kernel=kernels.get("query_kernel"),
                    private_kernel=kernels.get("private_kernel"), eta=spec.eta, nu=spec.nu,
                    seed=spec.seed)
    ranking, gains = np.asarray(result.ranking), np.asarray(result.gains)
    if spec.method == "delift" and (gains <= 1e-12).any():
        fallback = _embedding_kernels(store, lm, pools, function, options)
        ranking, gains, filled = _fill_zero_gain_tail(result, fallback, n_select, spec,
                                                      function)
        if filled:
            notes.append(f"{filled} picks made at zero utility gain were re-picked by "
                         "embedding similarity")
            config["zero_gain_refilled"] = filled
    return _Ranked(ranking, gains, float(result.objective), function, runs)
