"""What a stage works on, built once: the pools, the budget as a count, the key that makes
two selections the same, the scoring options, the engine every model pass runs on and a
lazy model.

Every ranker (``curator.stages.registry``) takes a ``StageContext`` and returns a
``Ranked``; ``curator.stages.save`` turns that into a stored selection.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curator.budget import parse_budget
from curator.config import ENGINE_KEYS, ScoringOptions, StageSpec, config_hash
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.engine import LOCAL, ScoringEngine, engine_for
from curator.scoring.jobs import UtilitySummary
from curator.store import NotFound, Store
from curator.store.datasets import load_samples, resolve_version
from curator.store.selection_rows import (
    SelectionRecord,
    get_selection,
    latest_selection,
    selection_sample_ids,
)
from curator.store.trash import trashed_ids
from curator.vocabulary import GRADIENT_METHODS, MODEL_METHODS

Echo = Callable[[str], None]
ModelSource = LoadedModel | Callable[[], LoadedModel] | None


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
class Ranked:
    """A ranker's answer: pool indices in pick order and what the record says about them.

    ``config`` and ``notes`` add to the stage's own; ``scores`` (per pick) and ``layers``
    (layer -> sample ids) are stored with the members; ``mask`` is a DualSFT mask stored
    against the selection; ``gains`` are the marginal gains of greedy methods (None: the
    method has none, and the outcome reports zeros)."""

    ranking: np.ndarray | list[int]
    gains: np.ndarray | None
    objective: float | None
    function: str | None
    runs: list[UtilitySummary] = field(default_factory=list)
    scores: list[float] | None = None
    layers: dict[str, list[str]] | None = None
    mask: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
        members = selection_sample_ids(store, parent_id)
        pools.parent = parent_id
        by_id = {s.sample_id: s for s in load_samples(store, parent.dataset, parent.version)}
        pools.previous = [by_id[i] for i in members if i in by_id]
        # "new": what the parent's version did not hold; "all": what the parent did not pick
        seen = by_id.keys() if spec.pool == "new" else set(members)
        pools.pool = [s for s in pool if s.sample_id not in seen]
        if not pools.pool:
            raise ValueError(f"nothing new in {dataset} v{version} since selection {parent_id} "
                             f"(v{parent.version})")
        if not pools.previous:
            raise ValueError(f"selection {parent_id} has no members to condition on")
    return pools


def trash_notes(pools: Pools) -> list[str]:
    return [f"{len(pools.trashed)} trashed sample(s) left out"] if pools.trashed else []


def ids(samples: list[Sample]) -> list[str]:
    return [s.sample_id for s in samples]


def stage_key(dataset: str, spec: StageSpec, pools: Pools, options: ScoringOptions,
              fingerprint: str | None) -> str:
    """What makes two selections the same: data (pool, target, parent), settings and model.

    Settings added after selections were stored enter the hash only when they differ from
    their default, so upgrading does not make every stored selection look new.
    """
    key: dict[str, Any] = {
        "dataset": dataset, "version": pools.version, "pool": ids(pools.pool),
        "target": pools.target_ref, "parent": pools.parent,
        "spec": {k: (dataclasses.asdict(spec.resolved_quality if k == "quality" else v)
                     if k in ("gradient", "quality") else v)
                 for k, v in vars(spec).items()
                 if k not in ("name", "version", "parent")
                 # the quality prior needs the model (random and full never read it) and
                 # enters only when it acts, so selections made before it keep their keys
                 and (k != "quality" or (spec.method in MODEL_METHODS
                                         and spec.resolved_quality.active))
                 # settings only DELIFT (or DualSFT) reads: other methods keep their hashes
                 and (k not in DELIFT_ONLY_SPEC or spec.method == "delift")
                 and (k != "gradient" or spec.method == "dualsft")},
        "options": {k: v for k, v in vars(options).items()
                    if not (k == "hubs" and v == 0) and k not in ENGINE_KEYS
                    and (k not in DELIFT_ONLY_OPTIONS or spec.method == "delift")},
        "model": fingerprint}
    if spec.method in GRADIENT_METHODS:
        # gradient selections made before cross-fitting, signed masks and GAST's union
        # budget differ from today's: they must not be reused as if identical
        key["gradient_rules"] = 2
    return config_hash(key)


# Stage settings and scoring options only DELIFT reads: other methods keep their stored
# selections' keys.
DELIFT_ONLY_SPEC = ("self_coverage", "harm")
DELIFT_ONLY_OPTIONS = ("expand", "tokens", "dense_target")


@dataclass
class StageContext:
    """One stage's inputs, resolved once (see ``build_context``)."""

    store: Store
    dataset: str
    spec: StageSpec
    pools: Pools
    n_select: int
    options: ScoringOptions           # hubs resolved to a count for this budget
    key: str                          # stage_key: equal keys, equal selections
    model: ModelSource = None
    auto_hubs: bool = False           # options.hubs was "auto" before resolving
    progress: bool = False
    echo: Echo | None = None
    started: float = field(default_factory=time.monotonic)
    # the quality prior's modular term per pool row (weight * q), set by the stage layer
    # when spec.quality.weight > 0 (curator/stages/quality.py); None: no modular term
    modular: np.ndarray | None = None
    # where every model pass of the stage runs (embeddings, utilities, quality, gradients)
    engine: ScoringEngine = LOCAL

    @property
    def lm(self) -> LoadedModel:
        """The model, loaded on first use (random and full never ask)."""
        if self.model is None:
            raise ValueError(f"method {self.spec.method} needs a model")
        if not isinstance(self.model, LoadedModel):
            self.model = self.model()
        return self.model

    @property
    def pool_ids(self) -> list[str]:
        return ids(self.pools.pool)

    @property
    def n_pool(self) -> int:
        return len(self.pools.pool)


def build_context(store: Store, dataset: str, spec: StageSpec, *, model: ModelSource = None,
                  options: ScoringOptions | None = None, previous_selection: str | None = None,
                  progress: bool = False, echo: Echo | None = None,
                  engine: ScoringEngine | None = None) -> StageContext:
    """Validate ``spec`` and ``options``, resolve the pools and the budget, load the model
    when the method needs one, and compute the stage's key. ``engine``: where the stage's
    model passes run (default: the one ``options.engine`` names)."""
    started = time.monotonic()
    spec.validate("stage")
    options = options or ScoringOptions()
    options.validate()
    pools = resolve_pools(store, dataset, spec, previous_selection)
    n_pool = len(pools.pool)
    n_select = parse_budget(spec.budget, n_pool)
    if spec.method in MODEL_METHODS:
        if model is None:
            raise ValueError(f"method {spec.method} needs a model")
        if not isinstance(model, LoadedModel):
            model = model()
    # Methods without a model keep a model in their key only when one was passed in loaded.
    fingerprint = model.fingerprint if isinstance(model, LoadedModel) else None
    # hub columns serve utility kernels only; "auto" becomes a count here, where the budget
    # is known, so the key and the record say what was scored
    auto_hubs = options.hubs == "auto"
    options = dataclasses.replace(options, hubs=options.resolved_hubs(n_select, n_pool)
                                  if spec.method == "delift" else 0)
    key = stage_key(dataset, spec, pools, options, fingerprint)
    return StageContext(store, dataset, spec, pools, n_select, options, key, model,
                        auto_hubs=auto_hubs, progress=progress, echo=echo, started=started,
                        engine=engine or engine_for(options))
