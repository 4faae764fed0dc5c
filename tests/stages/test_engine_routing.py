"""Every model pass of a stage runs on the stage's engine: the one ``scoring.engine`` names
(``--engine ray``) or the one passed to ``select_stage``. A recording engine that computes
locally stands in for Ray and says which of its methods each method's stage called."""

from __future__ import annotations

import dataclasses

import pytest

from curator.config import GradientOptions, QualityOptions, ScoringOptions, StageSpec
from curator.ingestion.ingest import ingest
from curator.scoring import engine as engines
from curator.scoring.engine import LOCAL
from curator.stages import select_stage
from curator.store import Store
from curator.testing import tiny_loaded_model
from tests.helpers import TINY_OPTIONS, write_jsonl

RAY = dataclasses.replace(TINY_OPTIONS, engine="ray")


class RecordingEngine:
    """Computes as the local engine does and counts the samples each method was given."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _record(self, method: str, n: int) -> None:
        self.calls[method] = self.calls.get(method, 0) + n

    def pair_chunks(self, lm, samples_by_id, pairs, config, **kw):
        self._record("pair_chunks", len(pairs))
        return LOCAL.pair_chunks(lm, samples_by_id, pairs, config, **kw)

    def embeddings(self, lm, samples, **kw):
        self._record("embeddings", len(samples))
        return LOCAL.embeddings(lm, samples, **kw)

    def quality(self, lm, samples, config, **kw):
        self._record("quality", len(samples))
        return LOCAL.quality(lm, samples, config, **kw)

    def gradient_sums(self, lm, samples, *args):
        self._record("gradient_sums", len(samples))
        return LOCAL.gradient_sums(lm, samples, *args)

    def sample_scores(self, lm, samples, *args):
        self._record("sample_scores", len(samples))
        return LOCAL.sample_scores(lm, samples, *args)


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


@pytest.fixture
def fresh(tmp_path, pair_rows):
    """A store with nothing scored: "d" (16 rows) and a target set "q" (3)."""
    store = Store(tmp_path / "store", lock_timeout=10)
    for name, rows in (("d", pair_rows(16)), ("q", pair_rows(3, start=40))):
        ingest(store, write_jsonl(tmp_path / f"{name}.jsonl", rows), name)
    return store


@pytest.fixture
def ray_engine(monkeypatch):
    """``engine_for`` answers ``engine: ray`` with a recording engine (no Ray needed)."""
    recorder = RecordingEngine()
    monkeypatch.setattr(engines, "_SHARED", {(None, None, 1): recorder})
    return recorder


@pytest.mark.parametrize(("method", "target"), [("embedding", None), ("rds", "q")])
def test_the_baselines_embed_on_the_named_engine(fresh, lm, ray_engine, method, target):
    spec = StageSpec(method=method, budget="4", stage="task" if target else "instruction",
                     target=target, quality=QualityOptions.off())
    select_stage(fresh, "d", spec, lm=lm, options=RAY)
    assert ray_engine.calls == {"embeddings": 16 + (3 if target else 0)}


def test_the_quality_prior_scores_and_embeds_on_the_named_engine(fresh, lm, ray_engine):
    spec = StageSpec(method="embedding", budget="4", quality=QualityOptions(drop="off",
                                                                            weight=0.5))
    select_stage(fresh, "d", spec, lm=lm, options=RAY)
    assert ray_engine.calls == {"quality": 16, "embeddings": 16}


def test_delift_and_its_evidence_loop_score_on_the_named_engine(fresh, lm, ray_engine):
    spec = StageSpec(method="delift", budget="12", quality=QualityOptions.off())
    out = select_stage(fresh, "d", spec, lm=lm, options=RAY)
    assert ray_engine.calls["embeddings"] == 16
    # every pair the stage scored, the graph's and the evidence loop's, was the engine's
    assert ray_engine.calls["pair_chunks"] == sum(r.n_computed for r in out.scoring)
    assert out.record.config["evidence"]["extra_pairs"] > 0


@pytest.mark.parametrize("method", ["gast", "less", "dualsft"])
def test_gradient_passes_run_on_the_engine_passed_in(fresh, lm, method):
    recorder = RecordingEngine()
    spec = StageSpec(method=method, budget="4", stage="task", target="q",
                     quality=QualityOptions.off())
    if method == "dualsft":
        spec.gradient = GradientOptions(warmup_steps=0)  # a warmed-up copy scores locally
    select_stage(fresh, "d", spec, lm=lm, options=ScoringOptions(k=3, max_length=128),
                 engine=recorder)
    assert recorder.calls["gradient_sums"] == 3 + (16 if method == "dualsft" else 0)
    assert recorder.calls["sample_scores"] >= 16
