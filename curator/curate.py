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

# Stage settings only DELIFT reads: other methods keep their stored selections' keys.
DELIFT_ONLY_SPEC = ("self_coverage", "harm")

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
    pool = pools.pool
    runs: list[UtilitySummary] = []
    if function in ("facility_location", "graph_cut", "flcg", "flmi") and len(pool) > 1:
        runs.append(score_utilities(store, lm, pool, pool, options, dataset=dataset,
                                    progress=progress, echo=echo))
    if function in ("flmi", "flvmi"):
        kq = _query_k(options, n_select, len(pools.target), len(pool))
        runs.append(score_utilities(store, lm, pools.target, pool, options, k=kq,
                                    dataset=dataset, progress=progress, echo=echo))
    if function == "flcg":
        runs.append(score_utilities(store, lm, pool, pools.previous, options, dataset=dataset,
                                    progress=progress, echo=echo))
    return _utility_kernels_from_store(store, lm, pools, function, options,
                                       self_coverage), runs


def _utility_kernels_from_store(store: Store, lm: LoadedModel, pools: Pools, function: str,
                                options: ScoringOptions, self_coverage: str = "best"
                                ) -> dict[str, Any]:
    """The stage function's kernels from every stored pair among their rows and columns."""
    pool, pool_ids = pools.pool, _ids(pools.pool)
    chash = utility_config(lm, options).config_hash()
    fp = lm.fingerprint
    out: dict[str, Any] = {}
    if function in ("flmi", "flvmi"):
        q = pools.target
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
        scale = max(utility_scale(store, fp, chash, pool_ids, pool_ids),
                    utility_scale(store, fp, chash, pool_ids, _ids(prev)))
        out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids, pool_ids,
                                                  scale, self_coverage).matrix
        out["private_kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids,
                                                          _ids(prev), scale).matrix
        return out
    if "kernel" not in out and function != "flvmi":
        if len(pool) > 1:
            out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids,
                                                      pool_ids,
                                                      self_coverage=self_coverage).matrix
        else:
            out["kernel"] = sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    return out


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
                 and (k not in DELIFT_ONLY_SPEC or spec.method == "delift")
                 and (k != "gradient" or spec.method == "dualsft")},
        "options": {k: v for k, v in vars(options).items()
                    if not (k == "hubs" and v == 0)
                    and (k != "expand" or spec.method == "delift")},
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
    if spec.method == "delift":
        return _rank_delift(store, lm, spec, pools, function, options, n_select, config,
                            notes, progress, echo, dataset)
    kernels = _embedding_kernels(store, lm, pools, function, options)
    result = _greedy(kernels, n_select, spec, function)
    return _Ranked(np.asarray(result.ranking), np.asarray(result.gains),
                   float(result.objective), function)


def _greedy(kernels: dict[str, Any], n_select: int, spec: StageSpec, function: str) -> Any:
    return select(kernels.get("kernel"), n_select, function=function,
                  optimizer=spec.optimizer, query_kernel=kernels.get("query_kernel"),
                  private_kernel=kernels.get("private_kernel"), eta=spec.eta, nu=spec.nu,
                  seed=spec.seed)


# At most this many rounds of on-demand scoring per selection (each round re-runs greedy).
EVIDENCE_ROUNDS = 8
# Pairs scored per pick still missing, per round: about half of measured pairs help.
PAIRS_PER_MISSING_PICK = 4


def _rank_delift(store: Store, lm: LoadedModel, spec: StageSpec, pools: Pools,
                 function: str, options: ScoringOptions, n_select: int,
                 config: dict[str, Any], notes: list[str], progress: bool,
                 echo: Callable[[str], None] | None, dataset: str) -> _Ranked:
    """DELIFT on a sparse utility kernel that asks for the evidence it lacks.

    1. Score the stage's candidate graph (kNN pairs, hub columns) and build the kernels.
    2. Leave out harmful examples (``spec.harm``; ``selection.evidence.harmful_columns``).
    3. Greedy; when picks start to come at zero gain before the budget is filled, score
       more pairs where the kernel is blind (rows nothing picked covers, against their most
       similar unscored candidates), at most ``options.expand`` times the graph's pairs in
       all, and run greedy again.
    4. A zero-gain tail that remains is ordered by utility evidence (candidates' mean
       utility), never by embedding similarity alone.
    """
    from curator.scoring.jobs import score_pair_list
    from curator.selection.evidence import (
        evidence_order,
        first_zero_gain,
        harmful_columns,
        propose_pairs,
        rows_by_need,
        without_columns,
    )

    pool_ids = _ids(pools.pool)
    kernels, runs = _utility_kernels(store, lm, pools, function, options, n_select,
                                     progress, echo, dataset, spec.self_coverage)
    chash = utility_config(lm, options).config_hash()
    graph_pairs = sum(r.n_pairs for r in runs)
    cap = int(round(options.expand * graph_pairs))
    # rows greedy covers, as sample ids: the targets for FLVMI, the pool otherwise
    row_samples = pools.target if function == "flvmi" else pools.pool
    row_ids = _ids(row_samples)
    emb = None
    harmful: np.ndarray = np.zeros(0, dtype=np.int64)
    mean = np.full(len(pool_ids), np.nan)
    extra = rounds = 0
    last_t, stale = -1, 0
    while True:
        if spec.harm != "off" or rounds:
            mean, count = _column_evidence(store, lm.fingerprint, chash,
                                           sorted(set(row_ids) | set(pool_ids)), pool_ids)
            if spec.harm == "mean":
                harmful = harmful_columns(mean, count)
        masked = _without_candidates(kernels, harmful, function, without_columns)
        result = _greedy(masked, n_select, spec, function)
        ranking, gains = np.asarray(result.ranking), np.asarray(result.gains, dtype=float)
        t = first_zero_gain(gains)
        # stop when the budget is filled by measured gains, the pair budget is spent, or two
        # rounds of pairs in a row bought no further informative pick
        stale = stale + 1 if t <= last_t else 0
        if t >= n_select or extra >= cap or rounds >= EVIDENCE_ROUNDS or stale >= 2:
            break
        last_t = max(last_t, t)
        head = ranking[:t]
        probe = _rows_in_need(masked, head, function, spec, rows_by_need)
        if emb is None:
            emb = _stage_embeddings(store, lm, pools, options)
        allowed = np.setdiff1d(np.arange(len(pool_ids)), np.concatenate([head, harmful]))
        scored = _scored_positions(store, lm.fingerprint, chash, row_ids, pool_ids)
        same = [(i, c) for i, r in enumerate(row_ids) for c in [_index(pool_ids, r)]
                if c is not None]
        # a round asks for about PAIRS_PER_MISSING_PICK pairs per pick still to make, spread
        # over the rows in most need (each row's most similar unscored candidates)
        want = min(cap - extra, PAIRS_PER_MISSING_PICK * (n_select - t))
        per_row = int(np.clip(-(-want // max(len(probe), 1)), 1, options.k))
        probe = probe[:-(-want // per_row)]
        proposed = propose_pairs(emb[row_ids], emb[pool_ids], probe, allowed, scored,
                                 per_row, same)[:want]
        if not proposed:
            break
        pairs = [(row_ids[r], pool_ids[c]) for r, c in proposed]
        runs.append(score_pair_list(store, lm, [*row_samples, *pools.pool], pairs, options,
                                    dataset=dataset, progress=progress, echo=echo))
        extra += len(pairs)
        rounds += 1
        kernels = _utility_kernels_from_store(store, lm, pools, function, options,
                                              spec.self_coverage)
    t = first_zero_gain(gains)
    filled = 0
    if t < n_select:
        rest = np.setdiff1d(np.arange(len(pool_ids)), ranking[:t])
        tail = evidence_order(rest, mean, harmful, seed=spec.seed)[:n_select - t]
        ranking = np.concatenate([ranking[:t], tail])
        gains = np.concatenate([gains[:t], np.zeros(len(tail))])
        filled = len(tail)
    config["utility_config"] = chash
    config["self_coverage"] = spec.self_coverage
    config["harm"] = spec.harm
    config["harmful_excluded"] = int(len(harmful))
    config["evidence"] = {"graph_pairs": int(graph_pairs), "extra_pairs": int(extra),
                          "rounds": int(rounds), "expand": options.expand}
    config["zero_gain_picks"] = int(filled)
    # what the kernels held (stored pairs of other stages count too): two selections with
    # equal settings but different store histories differ here
    config["kernel_nnz"] = {name: int(m.nnz) for name, m in kernels.items() if m is not None}
    if extra:
        notes.append(f"scored {extra} more pairs in {rounds} round(s) where the kernel had no "
                     f"evidence ({extra / max(graph_pairs, 1):.0%} of the graph's "
                     f"{graph_pairs})")
    if len(harmful):
        notes.append(f"left out {len(harmful)} harmful example(s): negative mean utility "
                     "over their scored pairs")
    if filled:
        notes.append(f"{filled} picks came at zero gain (no scored pair covered more) and were "
                     "ordered by the candidates' mean utility")
        config["zero_gain_refilled"] = filled
    objective = float(result.objective)
    return _Ranked(ranking, gains, objective, function, runs)


def _rows_in_need(kernels: dict[str, Any], head: np.ndarray, function: str, spec: StageSpec,
                  rows_by_need: Callable[..., np.ndarray]) -> np.ndarray:
    """Rows whose credit new pairs could still raise, for the stage's function, least
    covered first (``selection.evidence.rows_by_need``)."""
    if function == "flvmi":
        # rows are the targets: Q is (n_pool, n_query), a target's coverage its column max
        return rows_by_need(kernels["query_kernel"].T, head, seed=spec.seed)
    kernel = kernels["kernel"]
    if function == "flcg":
        prev = np.asarray(kernels["private_kernel"].max(axis=1).todense()).ravel()
        return rows_by_need(kernel, head, floor=spec.nu * prev, seed=spec.seed)
    if function == "flmi":
        q = kernels["query_kernel"]
        qmax = np.asarray(q.max(axis=1).todense()).ravel() if sp.issparse(q) \
            else np.asarray(q).max(axis=1)
        return rows_by_need(kernel, head, ceiling=spec.eta * qmax, seed=spec.seed)
    return rows_by_need(kernel, head, seed=spec.seed)


def _index(ids: list[str], x: str) -> int | None:
    try:
        return ids.index(x)
    except ValueError:
        return None


def _stage_embeddings(store: Store, lm: LoadedModel, pools: Pools,
                      options: ScoringOptions) -> dict[str, np.ndarray]:
    everyone = {s.sample_id: s for s in [*pools.pool, *pools.target, *pools.previous]}
    emb, _ = ensure_embeddings(store, lm, list(everyone.values()),
                               batch_size=options.batch_size)
    table = {sid: emb[i] for i, sid in enumerate(everyone)}

    class _ByIds(dict):
        def __getitem__(self, ids):  # type: ignore[override]
            return np.stack([dict.__getitem__(self, i) for i in ids])

    return _ByIds(table)


def _scored_positions(store: Store, model: str, chash: str, row_ids: list[str],
                      col_ids: list[str]) -> set[tuple[int, int]]:
    from curator.scoring.cache import existing_pairs

    r_pos = {s: i for i, s in enumerate(row_ids)}
    c_pos = {s: j for j, s in enumerate(col_ids)}
    return {(r_pos[t], c_pos[e]) for t, e in existing_pairs(store, model, chash, row_ids)
            if e in c_pos}


def _column_evidence(store: Store, model: str, chash: str, row_ids: list[str],
                     col_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's mean utility (in units of the largest positive one) over its valid
    scored pairs with the stage's rows, and how many pairs that is."""
    from curator.scoring.cache import load_utilities
    from curator.selection.evidence import column_mean_utility

    rows = load_utilities(store, model, chash, row_ids, col_ids)
    c_pos = {s: j for j, s in enumerate(col_ids)}
    ok = rows.valid & ~np.isnan(rows.utility)
    ok &= np.array([t != e for t, e in zip(rows.target_id, rows.example_id, strict=True)],
                   dtype=bool) if len(rows.utility) else ok
    pos = rows.utility[ok]
    scale = float(pos[pos > 0].max()) if (pos > 0).any() else 1.0
    cols = [c_pos[e] for e, k in zip(rows.example_id, ok, strict=True) if k]
    return column_mean_utility(cols, rows.utility[ok], len(col_ids), scale)


def _without_candidates(kernels: dict[str, Any], harmful: np.ndarray, function: str,
                        without_columns: Callable[..., Any]) -> dict[str, Any]:
    """The kernels with the harmful candidates' entries removed: they can only be picked
    at zero gain, in the evidence-ordered tail."""
    if not len(harmful):
        return kernels
    out = dict(kernels)
    if out.get("kernel") is not None:
        out["kernel"] = without_columns(out["kernel"], harmful, axis=1)
    if function == "flvmi" and out.get("query_kernel") is not None:
        out["query_kernel"] = without_columns(out["query_kernel"], harmful, axis=0)
    return out
