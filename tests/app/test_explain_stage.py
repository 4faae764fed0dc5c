"""The app's "why selected" reads the kernels the DELIFT stage maximised: one builder
(``curator.stages.delift.delift_kernels``) for both, checked on a real stage run."""

from __future__ import annotations

import numpy as np
import pytest

from curator.app.explain import explain, selection_kernels
from curator.config import QualityOptions, StageSpec
from curator.ingestion.ingest import ingest
from curator.stages import select_stage
from curator.stages.evidence import EvidenceLoop
from curator.store import Store
from curator.store.selection_rows import selection_members
from curator.testing import tiny_loaded_model
from tests.helpers import TINY_OPTIONS


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


@pytest.fixture
def used(monkeypatch):
    """The kernels greedy read in the stage's last run (after any pairs scored on demand)."""
    seen: dict[str, object] = {}
    run = EvidenceLoop.run

    def spy(self):
        out = run(self)
        seen.update(self.kernels)
        return out

    monkeypatch.setattr(EvidenceLoop, "run", spy)
    return seen


def _dense(m) -> np.ndarray:
    return np.asarray(m.toarray(), dtype=np.float64)


@pytest.fixture
def store(tmp_path, write_jsonl, pair_rows):
    store = Store(tmp_path / "s", lock_timeout=10)
    ingest(store, write_jsonl("d.jsonl", pair_rows(10)), "d")
    ingest(store, write_jsonl("d2.jsonl", pair_rows(4, start=10)), "d", append=True)
    ingest(store, write_jsonl("q.jsonl", [{"prompt": f"Add {i} and {i + 1}.",
                                           "response": f"{2 * i + 1}"} for i in range(3)]), "q")
    return store


def _first_pick_coverage(store, sid) -> tuple[float, float]:
    """The first pick's gain as stored, and the sum of what the app says it covers (greedy's
    first gain is exactly that sum)."""
    first = selection_members(store, sid)[0]
    why = explain(store, selection_kernels(store, sid), first["sample_id"], first,
                  limit=10_000)
    return first["gain"], sum(r["coverage"] for r in why["covers"])


def test_flmi_explanation_reads_the_stage_kernels(store, lm, used):
    out = select_stage(store, "d", StageSpec(stage="task", function="flmi", budget="3",
                                             version=1, target="q", eta=0.5, harm="off",
                                             quality=QualityOptions.off()),
                       lm=lm, options=TINY_OPTIONS)
    k = selection_kernels(store, out.selection_id)
    # the pool x pool kernel and the targets' cap, value for value (FLMI's shared scale)
    np.testing.assert_array_equal(_dense(k.cover), _dense(used["kernel"]))
    np.testing.assert_allclose(k.cap, 0.5 * _dense(used["query_kernel"]).max(axis=1))
    gain, covered = _first_pick_coverage(store, out.selection_id)
    assert gain > 0 and covered == pytest.approx(gain, rel=1e-5)


def test_flvmi_explanation_reads_the_stage_kernels(store, lm, used):
    out = select_stage(store, "d", StageSpec(stage="task", budget="3", version=1, target="q",
                                             harm="off", quality=QualityOptions.off()),
                       lm=lm, options=TINY_OPTIONS)
    k = selection_kernels(store, out.selection_id)
    assert k.helped is None
    np.testing.assert_array_equal(_dense(k.cover), _dense(used["query_kernel"]).T)


def test_flcg_explanation_reads_the_stage_kernels(store, lm, used):
    parent = select_stage(store, "d", StageSpec(method="random", budget="4", version=1,
                                                quality=QualityOptions.off()))
    out = select_stage(store, "d", StageSpec(stage="continual", budget="2", pool="all",
                                             harm="off", quality=QualityOptions.off()),
                       lm=lm, options=TINY_OPTIONS, previous_selection=parent.selection_id)
    k = selection_kernels(store, out.selection_id)
    np.testing.assert_array_equal(_dense(k.cover), _dense(used["kernel"]))
    np.testing.assert_allclose(k.already, _dense(used["private_kernel"]).max(axis=1))
    gain, covered = _first_pick_coverage(store, out.selection_id)
    assert covered == pytest.approx(gain, rel=1e-5, abs=1e-6)
