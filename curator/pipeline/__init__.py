"""What the CLI, the recipe runner and the scheduler share: a lazy model, ingesting a file
once by checksum, selecting a stage, and making sure a selection has its mask.

``Pipeline`` is that one object; ``curator.runner`` (recipes) and ``curator.schedule``
(scheduled runs) drive it, and the CLI's commands use its ``LazyModel``. ``exports`` writes
the app's exports (into the store's folder, or a zip).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator.config import ScoringOptions, StageSpec
from curator.digests import sha256_file
from curator.ingestion.ingest import IngestSummary, ingest
from curator.pipeline.model import LazyModel
from curator.records import Sample
from curator.stages import StageOutcome, select_stage
from curator.store import Store
from curator.store.datasets import has_versions, load_latest
from curator.store.inputs import is_ingested
from curator.store.selection_rows import get_mask_record

__all__ = ["LazyModel", "Pipeline", "ingest_once"]

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def ingest_once(store: Store, path: str | Path, dataset: str, append: bool = True,
                **kwargs: Any) -> IngestSummary | None:
    """Ingest a file unless a file with the same content was ingested into ``dataset``
    before (a renamed or re-copied file is not ingested twice). None when skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such input file: {path}")
    digest = sha256_file(path)
    store.init()
    if is_ingested(store, dataset, digest):
        return None
    # The file is recorded with the version, in one transaction: killed in between, a rerun
    # would ingest it again as another version.
    return ingest(store, str(path), dataset, append=append and has_versions(store, dataset),
                  record_file=(digest, str(path.resolve())), **kwargs)


@dataclass
class Pipeline:
    store: Store
    model: LazyModel = field(default_factory=LazyModel)
    options: ScoringOptions = field(default_factory=ScoringOptions)
    echo: Echo = _quiet
    progress: bool = False

    def ingest_once(self, path: str | Path, dataset: str, append: bool = True,
                    **kwargs: Any) -> IngestSummary | None:
        return ingest_once(self.store, path, dataset, append=append, **kwargs)

    def select(self, dataset: str, spec: StageSpec, previous_selection: str | None = None,
               reuse: bool = True) -> StageOutcome:
        return select_stage(self.store, dataset, spec, lm=self.model, options=self.options,
                            previous_selection=previous_selection, progress=self.progress,
                            echo=self.echo, reuse=reuse)

    def stage_mask(self, spec: StageSpec, selection_id: str) -> dict[str, Any] | None:
        """The mask info that goes with a stage's selection (recipes and schedules alike):
        a stage with a ``param_budget`` gets its DualSFT mask built, toward the stage's
        target and with this pipeline's scoring options (DualSFT stores its own with the
        selection); otherwise the stored mask, if the selection has one."""
        if spec.param_budget and spec.method != "dualsft":
            return self.ensure_mask(selection_id, spec.param_budget, seed=spec.seed,
                                    target=spec.target, options=self.options)
        rec = get_mask_record(self.store, selection_id)
        return rec["info"] if rec else None

    def ensure_mask(self, selection_id: str, param_budget: str, *, seed: int = 0,
                    target: str | None = None, targets: Sequence[Sample] | None = None,
                    options: ScoringOptions | None = None) -> dict[str, Any]:
        """The selection's mask info; builds the DualSFT mask first when it has none.
        ``target`` (a dataset: its latest version) or ``targets`` give the validation
        direction (default: a held-out slice of the subset)."""
        from curator.stages.gradient import mask_for_selection

        existing = get_mask_record(self.store, selection_id)
        if existing is not None:
            return existing["info"]
        self.echo(f"  DualSFT mask ({param_budget} of parameters) for {selection_id}")
        if target:
            targets = load_latest(self.store, target)
        return mask_for_selection(self.store, selection_id, self.model(), param_budget,
                                  targets, seed=seed, options=options)
