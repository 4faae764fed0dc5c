"""GAST in training: per-batch, per-layer sampling from each layer's scored rows (the
paper's rule), the stored per-layer scores, the export's layer_scores.json and manifest
counts, and `curator train` on a GAST export."""

from __future__ import annotations

import json

import pytest
import torch

from curator.records import Sample
from curator.testing import tiny_loaded_model
from curator.training.finetune import LayerRowWeights, train
from tests.helpers import write_jsonl


def _samples(n: int) -> list[Sample]:
    return [Sample.from_pair(f"question {i}: what is {i} plus {i}?", f"{2 * i}")
            for i in range(n)]


def test_per_batch_sampling_draws_only_rows_a_layer_scored(monkeypatch):
    lm = tiny_loaded_model("llama")
    samples = _samples(10)
    ids = [s.sample_id for s in samples]
    scored = {"model.layers.0": {ids[i]: float(i) for i in (0, 1, 2, 3, 4, 5)},
              "model.layers.1": {ids[i]: float(-i) for i in (4, 5, 6, 7, 8, 9)}}
    seen: list[tuple[list[int], dict[str, set[int]]]] = []
    original = LayerRowWeights.set_batch

    def spy(self, idx, device, picked=None):
        seen.append((list(idx), {k: set(v) for k, v in (picked or {}).items()}))
        return original(self, idx, device, picked)

    monkeypatch.setattr(LayerRowWeights, "set_batch", spy)
    res = train(lm, None, samples, layer_scores=scored, steps=12, batch_size=4, lr=1e-3)
    assert res.layer_sampling == "batch" and len(seen) == 12
    draws: dict[str, set[int]] = {k: set() for k in scored}
    for idx, picked in seen:
        for key, rows in picked.items():
            own = {i for i in idx if ids[i] in scored[key]}
            assert rows <= own  # only rows of this batch that the layer scored
            assert len(rows) == (max(1, round(0.5 * len(own))) if own else 0)
            draws[key] |= rows
    assert draws["model.layers.0"] <= set(range(6))
    assert draws["model.layers.1"] <= set(range(4, 10))
    assert res.layer_rows == {k: sum(len(p[k]) for _, p in seen) for k in scored}
    # the batches come from the union of the scored rows
    assert {i for idx, _ in seen for i in idx} <= set(range(10))


def test_per_batch_sampling_trains_each_layer_on_its_draws_only():
    """A layer that scored no row of the run does not move; one that did, does."""
    lm = tiny_loaded_model("llama")
    samples = _samples(6)
    ids = [s.sample_id for s in samples]
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    train(lm, None, samples, layer_scores={"model.layers.0": {i: 1.0 for i in ids},
                                           "model.layers.1": {}},
          steps=2, batch_size=3, lr=1e-2, outside_layers="frozen")
    after = dict(lm.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all(n.startswith("model.layers.0.") for n in moved)


def test_static_subsets_stay_an_option():
    lm = tiny_loaded_model("llama")
    samples = _samples(6)
    res = train(lm, None, samples, layer_subsets={"model.layers.0": [0, 1, 2],
                                                  "model.layers.1": [3, 4]},
                steps=1, batch_size=8, lr=1e-3)
    assert res.layer_sampling == "static" and res.n_train == 5
    assert res.layer_rows == {"model.layers.0": 3, "model.layers.1": 2}


@pytest.fixture
def gast_export(tmp_path, pair_rows):
    from curator.config import ScoringOptions, StageSpec
    from curator.ingestion.ingest import ingest
    from curator.outputs.subsets import export_selection
    from curator.stages import select_stage
    from curator.store import Store

    store = Store(tmp_path / "store", lock_timeout=10)
    ingest(store, write_jsonl(tmp_path / "d.jsonl", pair_rows(12)), "d")
    lm = tiny_loaded_model("llama")
    out = select_stage(store, "d", StageSpec(method="gast", budget="6", seed=1), lm=lm,
                       options=ScoringOptions(batch_size=8, max_length=128))
    return store, out, export_selection(store, out.selection_id, tmp_path / "export").path


def test_a_gast_export_carries_each_layers_scores_and_the_counts(gast_export):
    from curator.outputs.subsets import load_export
    from curator.store.selection_rows import selection_layer_scores, selection_layers

    store, out, path = gast_export
    layers = selection_layers(store, out.selection_id)
    scores = selection_layer_scores(store, out.selection_id)
    union = set().union(*map(set, layers.values()))
    assert set(scores) == set(layers) and union == set(out.sample_ids)
    assert all(set(v) == union for v in scores.values())  # every member, scored per layer
    exp = load_export(path)
    assert exp.layer_scores == scores and exp.layers == layers
    assert exp.manifest["union"] == len(union) == 6
    assert exp.manifest["layers"] == {k: len(v) for k, v in layers.items()}
    assert exp.manifest["layer_scores"] == {k: 6 for k in layers}


def test_curator_train_samples_per_batch_on_a_gast_export(gast_export, tmp_path):
    from click.testing import CliRunner

    from curator.cli import main

    _, _, export = gast_export
    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    args = ["train", str(export), "--model", str(tmp_path / "base"), "--steps", "2",
            "--batch-size", "4"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "m")], prog_name="curator")
    assert r.exit_code == 0, r.output
    assert "sampled per batch" in r.output
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    gast = manifest["gast"]
    assert gast["sampling"] == "batch" and gast["union"] == 6
    assert set(gast["layer_rows"]) == {"model.layers.0", "model.layers.1"}
    # an epoch of 6 rows in batches of 4: 4 rows (2 drawn per layer), then 2 rows (1 drawn)
    assert all(n == 3 for n in gast["layer_rows"].values())
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "s"), "--gast-sampling",
                                  "static"], prog_name="curator")
    assert r.exit_code == 0, r.output
    assert "sampled per batch" not in r.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["gast"]["sampling"] == "static"
    assert manifest["gast"]["layer_rows"] == json.loads((export / "manifest.json").read_text(
        ))["layers"]
