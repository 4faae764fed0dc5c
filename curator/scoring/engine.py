"""Where scoring runs: the local engine (this process) or Ray actors (``ray_engine``).

Every scoring call goes through an engine: the jobs, the stages and the gradient passes
always hold one (``LOCAL`` unless the scoring options name Ray), so ``--engine ray``
reaches every model pass a stage makes, and there is no second "run it here" path.

An engine computes; it never writes. The store-aware jobs (``curator.scoring.jobs``) decide
what is missing, hand it to the engine, and commit what comes back chunk by chunk, so the
store stays the single writer whichever engine computed, and a rerun resumes from what was
committed. Engines differ only in where the model runs:

- ``local``: the caller's model, in this process (the default);
- ``ray``: a pool of Ray actors, each holding the model once (one per GPU where the cluster
  has GPUs, else CPU actors with a thread count), fed shards of whole prefix groups.

Ray is imported only when the ray engine is asked for.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from curator.config import ScoringOptions
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.embeddings import embed_samples
from curator.scoring.engine_errors import EngineUnavailable
from curator.scoring.quality import QualityConfig, QualityRows, score_quality
from curator.scoring.utility import PairChunk, UtilityConfig, score_pairs

RAY_INSTALL_HINT = "pip install 'curator[ray]'"


class ScoringEngine(Protocol):
    """What the jobs and the stages need from an engine: pair chunks, embedding parts and
    quality rows, in any order (each carries its ids), computed from ``lm``'s weights;
    gradient sums (G, the curvature sum C, samples, batches) and per-sample gradient scores
    (``curator.scoring.gradients``). ``progress``: show one progress bar for the call."""

    name: str

    def pair_chunks(self, lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                    pairs: Sequence[tuple[str, str]], config: UtilityConfig, *,
                    batch_size: int, chunk_pairs: int,
                    target_distances: Mapping[str, float],
                    progress: bool = False) -> Iterator[PairChunk]: ...

    def embeddings(self, lm: LoadedModel, samples: Sequence[Sample], *, max_length: int,
                   batch_size: int, part: int,
                   progress: bool = False) -> Iterator[tuple[list[Sample], np.ndarray]]: ...

    def quality(self, lm: LoadedModel, samples: Sequence[Sample], config: QualityConfig, *,
                batch_size: int, part: int, progress: bool = False) -> Iterator[QualityRows]: ...

    def gradient_sums(self, lm: LoadedModel, samples: Sequence[Sample], scope: Sequence,
                      batch_size: int, max_length: int | None, curvature: bool) -> tuple: ...

    def sample_scores(self, lm: LoadedModel, samples: Sequence[Sample], u: Mapping,
                      scope: Sequence, batch_size: int, max_length: int | None,
                      progress: bool = False, norms: bool = False): ...


class LocalEngine:
    """Scores in this process with the caller's model."""

    name = "local"

    def pair_chunks(self, lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                    pairs: Sequence[tuple[str, str]], config: UtilityConfig, *,
                    batch_size: int, chunk_pairs: int,
                    target_distances: Mapping[str, float],
                    progress: bool = False) -> Iterator[PairChunk]:
        return score_pairs(lm, samples_by_id, pairs, config, batch_size=batch_size,
                           chunk_pairs=chunk_pairs, target_distances=target_distances,
                           progress=progress)

    def embeddings(self, lm: LoadedModel, samples: Sequence[Sample], *, max_length: int,
                   batch_size: int, part: int,
                   progress: bool = False) -> Iterator[tuple[list[Sample], np.ndarray]]:
        with tqdm(total=len(samples), unit="sample", disable=not progress,
                  desc="embeddings") as bar:
            for start in range(0, len(samples), part):
                chunk = list(samples[start:start + part])
                yield chunk, embed_samples(lm, chunk, max_length=max_length,
                                           batch_size=batch_size)
                bar.update(len(chunk))

    def quality(self, lm: LoadedModel, samples: Sequence[Sample], config: QualityConfig, *,
                batch_size: int, part: int, progress: bool = False) -> Iterator[QualityRows]:
        with tqdm(total=len(samples), unit="row", disable=not progress, desc="quality") as bar:
            for start in range(0, len(samples), part):
                chunk = list(samples[start:start + part])
                yield score_quality(lm, chunk, config, batch_size=batch_size)
                bar.update(len(chunk))

    def gradient_sums(self, lm: LoadedModel, samples: Sequence[Sample], scope: Sequence,
                      batch_size: int, max_length: int | None, curvature: bool) -> tuple:
        # the submodules, not the package: the package's statistics hold engines
        from curator.scoring.gradients.sums import gradient_sums

        return gradient_sums(lm, samples, scope, batch_size, max_length, curvature)

    def sample_scores(self, lm: LoadedModel, samples: Sequence[Sample], u: Mapping,
                      scope: Sequence, batch_size: int, max_length: int | None,
                      progress: bool = False, norms: bool = False):
        from curator.scoring.gradients.hooks import hook_scores

        return hook_scores(lm, samples, u, scope, batch_size, max_length, progress, norms)


LOCAL = LocalEngine()

# Ray engines by (address, workers, threads): a recipe's stages share one cluster and one
# actor pool per model instead of starting them per scoring call. Closed at exit.
_SHARED: dict[tuple, ScoringEngine] = {}


def engine_for(options: ScoringOptions | None) -> ScoringEngine:
    """The engine ``options.engine`` names (``local`` when None)."""
    if options is None or options.engine == "local":
        return LOCAL
    options.validate()  # the one check of where scoring runs (config): not "ray" stops here
    key = (options.ray_address, options.workers, options.threads)
    if key not in _SHARED:
        ray_engine = import_ray_engine()
        _SHARED[key] = ray_engine.RayEngine(address=options.ray_address,
                                            workers=options.workers, threads=options.threads)
    return _SHARED[key]


def import_ray_engine():
    """``curator.scoring.ray_engine``, or a one-line error naming the install command."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(f"--engine ray needs Ray, which is not installed: "
                                f"{RAY_INSTALL_HINT}") from exc
    from curator.scoring import ray_engine

    return ray_engine


@atexit.register
def close_shared() -> None:
    """Shut down the actor pools and any Ray cluster the shared engines started."""
    while _SHARED:
        _, engine = _SHARED.popitem()
        close = getattr(engine, "close", None)
        if close is not None:
            close()
