"""Store-aware scoring jobs: compute only what the cache lacks, commit in chunks, resume.

``score_utilities`` is the DELIFT scoring step: embed the samples (cached), take candidate
pairs from the FAISS kNN graph (or all pairs with ``dense``), drop pairs already stored for
this model and config, and score the rest chunk by chunk, committing each chunk. A killed
run loses at most the chunk in flight; the rerun skips everything committed.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass

import numpy as np

from curator.config import ScoringOptions
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.embeddings import embedder_fingerprint
from curator.scoring.engine import LOCAL, ScoringEngine, engine_for
from curator.scoring.kernels import Kernel, utility_kernel
from curator.scoring.neighbours import dense_pairs, knn, neighbour_pairs
from curator.scoring.quality import QualityConfig, QualityRows
from curator.scoring.utility import UtilityConfig
from curator.store import Store
from curator.store.scores import (
    UtilityRows,
    existing_pairs,
    load_embeddings,
    load_losses,
    load_quality,
    load_utilities,
    remember_model,
    save_embeddings,
    save_losses,
    save_quality,
    save_utilities,
)

EMBED_MAX_LENGTH = 512
EMBED_COMMIT = 512     # samples per committed embedding batch
PAIR_COMMIT = 256      # pairs per committed utility chunk
QUALITY_COMMIT = 256   # rows per committed quality chunk


@dataclass
class UtilitySummary:
    n_targets: int
    n_examples: int
    n_pairs: int          # candidate pairs wanted
    n_computed: int       # scored in this run
    n_reused: int         # already in the store
    n_invalid: int        # computed but invalid (did not fit, etc.)
    n_embedded: int       # samples embedded in this run
    seconds: float
    model: str
    config: str           # utility config hash
    graph: str            # "exact", "hnsw(...)" or "dense"
    run_id: str | None = None

    @property
    def pairs_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.n_computed == 0:
            return (f"nothing new to score: {self.n_pairs} pairs already in the store "
                    f"(model {self.model}, config {self.config})")
        return (f"pairs: {self.n_pairs} wanted, {self.n_computed} computed, {self.n_reused} "
                f"reused, {self.n_invalid} invalid; {self.n_embedded} samples embedded; "
                f"{self.seconds:.1f} s ({self.pairs_per_second:.1f} pairs/s; graph "
                f"{self.graph})")


def utility_config(lm: LoadedModel, options: ScoringOptions) -> UtilityConfig:
    return UtilityConfig(distance=options.distance, max_length=options.max_length,
                         tokens=options.tokens).resolved(lm)


def ensure_embeddings(store: Store, lm: LoadedModel, samples: Sequence[Sample], *,
                      batch_size: int = 16, progress: bool = False,
                      engine: ScoringEngine = LOCAL) -> tuple[np.ndarray, int]:
    """Embeddings of ``samples`` (N, d) in order, computing and storing only missing ones
    (on ``engine``; each part the engine returns is one commit)."""
    remember_model(store, lm.fingerprint, lm.name)
    key = embedder_fingerprint(lm, EMBED_MAX_LENGTH)
    ids = [s.sample_id for s in samples]
    cached = load_embeddings(store, key, ids)
    missing = [s for s in samples if s.sample_id not in cached]
    parts = engine.embeddings(
        lm, missing, max_length=EMBED_MAX_LENGTH, batch_size=batch_size, part=EMBED_COMMIT,
        progress=progress) if missing else iter(())
    for part, vectors in parts:
        save_embeddings(store, key, [s.sample_id for s in part], vectors)
        cached.update({s.sample_id: v for s, v in zip(part, vectors, strict=True)})
    if not samples:
        return np.zeros((0, 0), dtype=np.float32), 0
    return np.stack([cached[i] for i in ids]), len(missing)


def ensure_quality(store: Store, lm: LoadedModel, samples: Sequence[Sample], *,
                   config: QualityConfig | None = None, batch_size: int = 16,
                   progress: bool = False, engine: ScoringEngine = LOCAL
                   ) -> tuple[QualityRows, int]:
    """The quality prior's rows for ``samples`` in order (``curator.scoring.quality``),
    computing and committing only those not stored for this model and config (a killed
    run resumes from its last commit). Returns (rows, how many were computed)."""
    cfg = config or QualityConfig()
    remember_model(store, lm.fingerprint, lm.name)
    chash = cfg.config_hash(lm)
    ids = [s.sample_id for s in samples]
    stored = load_quality(store, lm.fingerprint, chash, ids)
    missing = [s for s in samples if s.sample_id not in stored]
    parts = engine.quality(
        lm, missing, cfg, batch_size=batch_size, part=QUALITY_COMMIT,
        progress=progress) if missing else iter(())
    for rows in parts:
        save_quality(store, lm.fingerprint, chash, rows.sample_id, rows.loss, rows.uncond_loss,
                     rows.stop_nll, rows.n_answer, rows.reason)
        stored.update({sid: (float(a), float(b), float(c), int(n), r) for sid, a, b, c, n, r
                       in zip(rows.sample_id, rows.loss, rows.uncond_loss, rows.stop_nll,
                              rows.n_answer, rows.reason, strict=True)})
    got = [stored[i] for i in ids]
    return QualityRows(ids, np.array([g[0] for g in got], dtype=np.float64),
                       np.array([g[1] for g in got], dtype=np.float64),
                       np.array([g[2] for g in got], dtype=np.float64),
                       np.array([g[3] for g in got], dtype=np.int64),
                       [g[4] for g in got]), len(missing)


def candidate_pairs(targets: Sequence[Sample], examples: Sequence[Sample],
                    target_emb: np.ndarray | None, example_emb: np.ndarray | None, k: int,
                    dense: bool = False) -> tuple[list[tuple[str, str]], str]:
    """(target_id, example_id) pairs to score and how they were found.

    When targets and examples are the same set, a sample is never its own example.
    """
    t_ids = [s.sample_id for s in targets]
    e_ids = [s.sample_id for s in examples]
    same = t_ids == e_ids
    if dense:
        pairs = dense_pairs(t_ids) if same else dense_pairs(t_ids, e_ids)
        return [(t, e) for t, e in pairs if t != e], "dense"
    assert target_emb is not None and example_emb is not None
    available = len(e_ids) - (1 if same else 0)
    if available < 1:
        raise ValueError("no candidate examples: the example set has no other sample")
    nb = knn(target_emb, example_emb, min(k, available), exclude_self=same)
    pairs = [(t, e) for t, e in neighbour_pairs(t_ids, e_ids, nb) if t != e]
    return pairs, nb.method


def hub_examples(target_ids: Sequence[str], example_ids: Sequence[str], utility: np.ndarray,
                 valid: np.ndarray, h: int) -> list[str]:
    """The ``h`` examples that helped the targets they were scored with most: highest mean
    of max(utility, 0) over their scored pairs (an invalid pair counts 0), ties by id.

    A kNN graph scores an example only with the targets that list it as a neighbour, so an
    example that helps nearly every target but is few targets' neighbour (a "hub") is seen
    by few rows of the kernel; facility location at small budgets wants exactly those
    (bench/results/pruning_variants.md). Scoring the hubs against every target fills them in.
    """
    if h <= 0:
        return []
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    gain = np.where(np.asarray(valid, dtype=bool), np.nan_to_num(np.asarray(utility, float)),
                    0.0).clip(min=0.0)
    for e, g in zip(example_ids, gain.tolist(), strict=True):
        total[e] += g
        count[e] += 1
    return sorted(total, key=lambda e: (-total[e] / count[e], e))[:h]


def score_utilities(store: Store, lm: LoadedModel, targets: Sequence[Sample],
                    examples: Sequence[Sample], options: ScoringOptions | None = None, *,
                    k: int | None = None, dataset: str | None = None, progress: bool = False,
                    echo: Callable[[str], None] | None = None,
                    engine: ScoringEngine | None = None) -> UtilitySummary:
    """Score UF(target, example) for the candidate pairs of ``targets`` x ``examples``.

    ``engine`` computes (default: the one ``options.engine`` names); this process commits.

    With ``options.hubs`` = h, a second pass scores the h hub examples (``hub_examples``
    over the candidate pairs) against every target as well. "auto" needs the selection
    budget, which scoring alone does not know: it scores no hubs here, and selection
    (``stages.select_stage``) resolves it to a count first.
    """
    options = options or ScoringOptions()
    engine = engine or engine_for(options)
    if not targets:
        raise ValueError("no targets to score (empty set)")
    if not examples:
        raise ValueError("no candidate examples to score against (empty set)")
    started = time.monotonic()
    config = utility_config(lm, options)
    chash = config.config_hash()
    n_embedded = 0
    t_emb = e_emb = None
    if not options.dense:
        both = {s.sample_id: s for s in [*targets, *examples]}
        emb, n_embedded = ensure_embeddings(store, lm, list(both.values()),
                                            batch_size=options.batch_size, progress=progress,
                                            engine=engine)
        row = {sid: i for i, sid in enumerate(both)}
        t_emb = emb[[row[s.sample_id] for s in targets]]
        e_emb = emb[[row[s.sample_id] for s in examples]]
    pairs, graph = candidate_pairs(targets, examples, t_emb, e_emb, k or options.k,
                                   options.dense)
    t_ids = [s.sample_id for s in targets]
    done = existing_pairs(store, lm.fingerprint, chash, t_ids)
    summary = UtilitySummary(len(targets), len(examples), len(pairs), 0, 0, 0, n_embedded, 0.0,
                             lm.fingerprint, chash, graph)
    samples_by_id = {s.sample_id: s for s in [*targets, *examples]}
    job = _PairJob(store, lm, config, options, samples_by_id, summary, dataset, progress, echo,
                   engine)
    try:
        job.run([p for p in pairs if p not in done])
        n_hubs = options.resolved_hubs()
        if n_hubs and not options.dense:
            wanted = set(pairs)
            rows = load_utilities(store, lm.fingerprint, chash, t_ids,
                                  [s.sample_id for s in examples])
            keep = [i for i, p in enumerate(zip(rows.target_id, rows.example_id, strict=True))
                    if p in wanted]
            hubs = hub_examples([rows.target_id[i] for i in keep],
                                [rows.example_id[i] for i in keep], rows.utility[keep],
                                rows.valid[keep], n_hubs)
            extra = [(t, e) for e in hubs for t in t_ids if t != e and (t, e) not in wanted]
            summary.n_pairs += len(extra)
            summary.graph = f"{graph} + {len(hubs)} hubs"
            job.run([p for p in extra if p not in done])
    except BaseException as exc:
        job.fail(exc)
        raise
    job.finish(started)
    return summary


def score_pair_list(store: Store, lm: LoadedModel, samples: Sequence[Sample],
                    pairs: Sequence[tuple[str, str]], options: ScoringOptions | None = None, *,
                    dataset: str | None = None, progress: bool = False,
                    echo: Callable[[str], None] | None = None,
                    engine: ScoringEngine | None = None) -> UtilitySummary:
    """Score UF(target, example) for an explicit list of (target_id, example_id) pairs (those
    already stored are skipped), under one recorded run, committed chunk by chunk: what a
    selection asks for when its kNN pairs run out (``curator.selection.evidence_rules``)."""
    remember_model(store, lm.fingerprint, lm.name)
    options = options or ScoringOptions()
    started = time.monotonic()
    config = utility_config(lm, options)
    chash = config.config_hash()
    by_id = {s.sample_id: s for s in samples}
    missing = {x for p in pairs for x in p if x not in by_id}
    if missing:
        raise KeyError(f"{len(missing)} sample id(s) in the pairs are not among the samples")
    wanted = list(dict.fromkeys((t, e) for t, e in pairs if t != e))
    done = existing_pairs(store, lm.fingerprint, chash, sorted({t for t, _ in wanted}))
    summary = UtilitySummary(len({t for t, _ in wanted}), len({e for _, e in wanted}),
                             len(wanted), 0, 0, 0, 0, 0.0, lm.fingerprint, chash, "on demand")
    job = _PairJob(store, lm, config, options, by_id, summary, dataset, progress, echo,
                   engine or engine_for(options))
    try:
        job.run([p for p in wanted if p not in done])
    except BaseException as exc:
        job.fail(exc)
        raise
    job.finish(started)
    return summary


class _PairJob:
    """Scores lists of pairs into the store under one recorded run (started on first use),
    committing chunk by chunk."""

    def __init__(self, store: Store, lm: LoadedModel, config: UtilityConfig,
                 options: ScoringOptions, samples_by_id: dict[str, Sample],
                 summary: UtilitySummary, dataset: str | None, progress: bool,
                 echo: Callable[[str], None] | None, engine: ScoringEngine) -> None:
        self.store, self.lm, self.config, self.options = store, lm, config, options
        self.engine = engine
        self.samples_by_id, self.summary, self.dataset = samples_by_id, summary, dataset
        self.progress, self.echo = progress, echo
        self.run_id: str | None = None
        self.total = 0
        self.saved_losses: set[str] = set()

    def run(self, todo: list[tuple[str, str]]) -> None:
        if not todo:
            return
        store, lm, summary = self.store, self.lm, self.summary
        fp, chash = lm.fingerprint, summary.config
        self.total += len(todo)
        if self.echo:
            self.echo(f"scoring {len(todo)} pairs ({summary.n_pairs - len(todo) - summary.n_computed}"
                      " already stored)")
        if self.run_id is None:
            self.run_id = store.start_run("score-utility", self.dataset,
                                          {"model": fp, "config": chash, "pairs": len(todo),
                                           "engine": self.engine.name},
                                          total=len(todo))
            summary.run_id = self.run_id
        else:
            store.update_run(self.run_id, total=self.total)
        known = {t: d for t, d in load_losses(store, fp, chash,
                                              sorted({t for t, _ in todo})).items()
                 if d is not None}
        self.saved_losses |= set(known)
        for chunk in self.engine.pair_chunks(lm, self.samples_by_id, todo, self.config,
                                             batch_size=self.options.batch_size,
                                             chunk_pairs=PAIR_COMMIT, target_distances=known,
                                             progress=self.progress):
            reasons = [r or None for r in chunk.reason]
            new_targets = {}
            for t, d in zip(chunk.target_id, chunk.d_target, strict=True):
                if t not in self.saved_losses:
                    new_targets[t] = None if math.isnan(float(d)) else float(d)
            # One transaction (one open, one commit) per chunk: the pairs, their targets'
            # d(i) and the run's progress land together, and a small rescore does not pay
            # three checkpoints per chunk.
            with store.atomic():
                save_utilities(store, fp, chash, chunk.target_id, chunk.example_id,
                               chunk.utility, chunk.d_target, chunk.d_target_given_example,
                               chunk.valid, reasons)
                if new_targets:
                    save_losses(store, fp, chash, list(new_targets),
                                list(new_targets.values()), [0] * len(new_targets))
                store.update_run(self.run_id, done=summary.n_computed + len(chunk))
            self.saved_losses.update(new_targets)
            summary.n_computed += len(chunk)
            summary.n_invalid += int((~chunk.valid).sum())

    def fail(self, exc: BaseException) -> None:
        if self.run_id is not None:
            self.store.finish_run(self.run_id, "failed", error=str(exc) or type(exc).__name__)

    def finish(self, started: float) -> None:
        """Complete the summary (pairs reused, seconds since ``started``) and the run."""
        s = self.summary
        s.n_reused = s.n_pairs - s.n_computed
        s.seconds = time.monotonic() - started
        if self.run_id is not None:
            self.store.finish_run(self.run_id, "done", result={
                "computed": s.n_computed, "invalid": s.n_invalid,
                "seconds": round(s.seconds, 2)})


def _stored(store: Store, model: str, config: str, row_ids: Sequence[str],
            col_ids: Sequence[str], exclude: Set[tuple[str, str]] | None) -> UtilityRows:
    rows = load_utilities(store, model, config, list(row_ids), list(col_ids))
    if not exclude:
        return rows
    keep = np.array([(t, e) not in exclude
                     for t, e in zip(rows.target_id, rows.example_id, strict=True)], dtype=bool)
    idx = np.flatnonzero(keep)
    return UtilityRows([rows.target_id[i] for i in idx], [rows.example_id[i] for i in idx],
                       rows.utility[keep], rows.valid[keep])


def utility_kernel_from_store(store: Store, model: str, config: str, row_ids: Sequence[str],
                              col_ids: Sequence[str], scale: float | None = None,
                              self_coverage: str = "best",
                              exclude: Set[tuple[str, str]] | None = None) -> Kernel:
    """Kernel (rows: targets to cover, columns: candidate examples) from stored utilities,
    leaving out the (target, example) pairs in ``exclude``."""
    rows = _stored(store, model, config, row_ids, col_ids, exclude)
    return utility_kernel(rows.target_id, rows.example_id, rows.utility, rows.valid,
                          row_ids=list(row_ids), col_ids=list(col_ids), scale=scale,
                          self_coverage=self_coverage)


def utility_scale(store: Store, model: str, config: str, row_ids: Sequence[str],
                  col_ids: Sequence[str],
                  exclude: Set[tuple[str, str]] | None = None) -> float:
    """The largest valid positive utility among these pairs (1.0 when there is none): the
    common scale when two kernels (e.g. FLCG's pool and private kernels) must share units."""
    rows = _stored(store, model, config, row_ids, col_ids, exclude)
    ok = rows.valid & ~np.isnan(rows.utility) & (rows.utility > 0)
    ok &= np.array([t != e for t, e in zip(rows.target_id, rows.example_id, strict=True)],
                   dtype=bool) if len(rows.utility) else ok
    return float(rows.utility[ok].max()) if ok.any() else 1.0
