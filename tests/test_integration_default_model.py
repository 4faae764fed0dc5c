"""End to end on the real embedded default model (SmolLM2-135M-Instruct): a small pool,
DELIFT selection, a DualSFT mask, an export, and a masked training step.

Slow (about a minute on 2 cores): run with `make test-slow` or `pytest -m slow`.
"""

from __future__ import annotations

import json

import pytest
import torch

from curator.config import ScoringOptions, StageSpec
from curator.ingestion.ingest import ingest
from curator.models import load_model
from curator.outputs.subsets import export_selection, load_export
from curator.sample_data import SAMPLE_DATA_DIR
from curator.stages import select_stage
from curator.stages.gradient import mask_for_selection
from curator.store import Store
from curator.training.finetune import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_lm():
    return load_model(None)


def test_default_model_selects_masks_exports_and_trains(tmp_path, default_lm) -> None:
    rows = (SAMPLE_DATA_DIR / "v1.jsonl").read_text().splitlines()[:24]
    data = tmp_path / "pool.jsonl"
    data.write_text("\n".join(rows) + "\n")
    store = Store(tmp_path / "store")
    ingest(store, str(data), "pool")
    options = ScoringOptions(k=2, batch_size=8, max_length=256)
    out = select_stage(store, "pool", StageSpec(stage="instruction", budget="25%"),
                       lm=default_lm, options=options)
    assert out.record.n_pool == 24 and out.record.n_selected == 6
    # k = 2 pairs for each row the quality prior (on by default) kept
    dropped = out.record.config["quality"]["n_dropped"]
    assert out.scoring[0].n_computed == 2 * (24 - dropped) and out.scoring[0].n_invalid == 0
    assert out.record.model == default_lm.fingerprint
    # The recorded gains are the utilities' part of greedy's (the quality prior's modular
    # term is left out, so they need not decrease): non-negative, summing to the objective.
    gains = out.gains
    assert (gains >= -1e-9).all()
    assert abs(gains.sum() - out.record.objective) < 1e-6 * max(1.0, out.record.objective)
    # Rerun: nothing new to score, the same selection.
    again = select_stage(store, "pool", StageSpec(stage="instruction", budget="25%"),
                         lm=default_lm, options=options)
    assert again.reused and again.selection_id == out.selection_id

    fp32 = load_model(None, dtype="fp32")
    info = mask_for_selection(store, out.selection_id, fp32, "2%", options=options)
    assert abs(info["scope_density"] - 0.02) < 1e-3
    exp = load_export(export_selection(store, out.selection_id, tmp_path / "exp").path)
    assert [s.sample_id for s in exp.samples] == out.sample_ids
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["mask"]["file"] == "mask.safetensors"

    before = {n: p.detach().clone() for n, p in fp32.model.named_parameters()}
    result = train(fp32, None, exp.samples, mask=exp.mask, steps=1, batch_size=3, lr=1e-4,
                   max_length=256)
    assert result.steps == 1
    moved = 0
    for name, p in fp32.model.named_parameters():
        m = exp.mask.get(name)
        if m is None:
            assert torch.equal(p, before[name]), name
        else:
            assert torch.equal(p[~m], before[name][~m]), name
            moved += int((p[m] != before[name][m]).sum())
    assert moved > 0
