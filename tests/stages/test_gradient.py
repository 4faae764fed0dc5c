"""Gradient stages: DualSFT stores a subset and a mask of the asked density, GAST a subset
per layer, LESS a top-k by score; masks are recorded with the file's sha256."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

from curator.config import GradientOptions, QualityOptions
from curator.config import StageSpec as _StageSpec
from curator.ingestion.ingest import ingest
from curator.outputs.mask_files import load_mask
from curator.stages import select_stage
from curator.stages.gradient import mask_for_selection
from curator.stages.save import store_mask
from curator.store import Store
from curator.store.selection_rows import (
    get_mask_record,
    get_selection,
    selection_layers,
    selection_members,
    selection_sample_ids,
)
from tests.helpers import TINY_OPTIONS, write_jsonl


def StageSpec(**kw) -> _StageSpec:  # noqa: N802 - stands in for the config class
    """The gradient stages' mechanics over the whole pool: the quality prior (on by
    default, tests/stages/test_quality_prior.py) is off here."""
    kw.setdefault("quality", QualityOptions.off())
    return _StageSpec(**kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory, pair_rows):
    """Dataset "d" (16 samples) and target set "q" (3), ingested once; tests use copies."""
    root = tmp_path_factory.mktemp("gradient-base")
    store = Store(root / "store", lock_timeout=10)
    for name, data in (("d", pair_rows(16)), ("q", pair_rows(3, start=50))):
        ingest(store, write_jsonl(root / f"{name}.jsonl", data), name)
    return store.path


@pytest.fixture
def gstore(base, tmp_path):
    shutil.copytree(base, tmp_path / "store")
    return Store(tmp_path / "store", lock_timeout=10)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



@pytest.mark.slow  # gradient passes on a tiny model: make test-slow
def test_dualsft_stores_subset_and_mask(gstore, lm):
    out = select_stage(gstore, "d", StageSpec(method="dualsft", budget="25%",
                                              param_budget="10%"), lm=lm, options=TINY_OPTIONS)
    rec = get_selection(gstore, out.selection_id)
    assert (rec.method, rec.function, rec.n_pool, rec.n_selected) == (
        "dualsft", "top_k_gradient_utility", 16, 4)
    assert rec.model == lm.fingerprint and rec.config["param_budget"] == "10%"
    members = selection_members(gstore, out.selection_id)
    scores = [m["score"] for m in members]
    assert [m["sample_id"] for m in members] == out.sample_ids
    assert scores == sorted(scores, reverse=True)           # top-k by data utility
    assert rec.objective == pytest.approx(sum(scores))
    # every pool sample's score is cached, and the members' are the top four of them
    cached = dict(gstore.query("SELECT sample_id, score FROM gradient_scores WHERE model = ?",
                               [lm.fingerprint]))
    assert len(cached) == 16
    top = sorted(cached.values(), reverse=True)[:4]
    np.testing.assert_allclose(scores, top, rtol=1e-6)

    mask_rec = get_mask_record(gstore, out.selection_id)
    path = gstore.artifacts / mask_rec["path"]
    assert mask_rec["path"] == f"masks/{out.selection_id}.safetensors"
    assert sha256(path) == mask_rec["sha256"]
    info = mask_rec["info"]
    assert info["scope_density"] == pytest.approx(0.10, abs=0.01)
    mask = load_mask(path, lm.model)
    kept = sum(int(m.sum()) for m in mask.values())
    assert mask_rec["n_kept"] == kept == info["overall"]["selected"]
    assert mask_rec["n_params"] == sum(p.numel() for p in lm.model.parameters())
    assert mask_rec["density"] == pytest.approx(kept / mask_rec["n_params"])
    assert all(d["selected"] > 0 for d in info["per_layer"].values())   # no layer starved


@pytest.mark.slow  # gradient passes on a tiny model: make test-slow
def test_dualsft_default_param_budget_is_five_percent(gstore, lm):
    out = select_stage(gstore, "d", StageSpec(method="dualsft", budget="4"), lm=lm,
                       options=TINY_OPTIONS)
    info = get_mask_record(gstore, out.selection_id)["info"]
    assert info["scope_density"] == pytest.approx(0.05, abs=0.01)
    assert get_selection(gstore, out.selection_id).config["param_budget"] == "5%"


def test_gast_stores_a_subset_per_layer_and_their_union(gstore, lm):
    out = select_stage(gstore, "d", StageSpec(method="gast", budget="4", target="q"), lm=lm,
                       options=TINY_OPTIONS)
    layers = selection_layers(gstore, out.selection_id)
    assert sorted(layers) == ["model.layers.0", "model.layers.1"]
    sizes = {len(v) for v in layers.values()}
    assert len(sizes) == 1 and 2 <= sizes.pop() <= 4
    union = set().union(*layers.values())
    assert set(out.sample_ids) == union and len(union) == 4  # the union is the budget
    assert selection_sample_ids(gstore, out.selection_id) == out.sample_ids
    # most-used first: a sample in both layers ranks before one in a single layer
    uses = [sum(s in v for v in layers.values()) for s in out.sample_ids]
    assert uses == sorted(uses, reverse=True)
    rec = get_selection(gstore, out.selection_id)
    assert (rec.function, rec.n_selected, rec.target) == ("gast_sampled", len(union), "q:1")
    assert rec.config["layers"] == 2 and rec.config["layer_share"] == 0.5
    assert rec.config["layer_size"] == len(next(iter(layers.values())))
    assert rec.config["support"].startswith("mean gradient of the target set")
    assert get_mask_record(gstore, out.selection_id) is None


@pytest.mark.slow  # gradient passes on a tiny model: make test-slow
def test_dualsft_record_states_the_gradient_settings_and_the_prior(gstore, lm):
    default = select_stage(gstore, "d", StageSpec(method="dualsft", budget="4"), lm=lm,
                           options=TINY_OPTIONS)
    cfg = get_selection(gstore, default.selection_id).config
    assert cfg["gradient"] == {"warmup_steps": 10, "eta": 2e-5, "lambda_new": 1.0,
                               "lambda_prior": 1.0, "tau": 2.0, "mask_rank": "signed",
                               "mask_spread": 0.0, "normalize": "none"}
    assert cfg["v_prior"].startswith("kl to reference")  # warmed up by default
    cold = select_stage(gstore, "d", StageSpec(method="dualsft", budget="4",
                                               gradient=GradientOptions(warmup_steps=0)),
                        lm=lm, options=TINY_OPTIONS)
    cfg = get_selection(gstore, cold.selection_id).config
    assert cfg["v_prior"].startswith("zero")  # no warm-up: the prior did nothing
    assert "cross-fitted" in cfg["v_new"]  # no target set: a held-out slice, cross-fitted
    warm_spec = StageSpec(method="dualsft", budget="4", target="q",
                          gradient=GradientOptions(warmup_steps=2, eta=1e-3, tau=1.5,
                                                   mask_rank="abs", mask_spread=0.5))
    warm = select_stage(gstore, "d", warm_spec, lm=lm, options=TINY_OPTIONS)
    assert warm.selection_id != cold.selection_id
    cfg = get_selection(gstore, warm.selection_id).config
    assert cfg["gradient"]["warmup_steps"] == 2 and cfg["gradient"]["mask_rank"] == "abs"
    assert cfg["v_prior"] == "kl to reference model (tau=1.5, confidence=max_prob)"
    assert cfg["v_new"].startswith("mean gradient of the target set")


def test_less_ranks_by_score_descending(gstore, lm):
    # the quality prior off: every pool row is scored and ranked by its score alone
    out = select_stage(gstore, "d", StageSpec(method="less", budget="5", target="q",
                                              quality=QualityOptions.off()), lm=lm,
                       options=TINY_OPTIONS)
    members = selection_members(gstore, out.selection_id)
    scores = [m["score"] for m in members]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    cached = dict(gstore.query("SELECT sample_id, score FROM gradient_scores WHERE model = ?",
                               [lm.fingerprint]))
    assert len(cached) == 16
    best = sorted(cached, key=lambda s: -cached[s])[:5]
    assert out.sample_ids == best
    assert "LESS-style baseline" in out.notes[0]
    assert get_selection(gstore, out.selection_id).function == "top_k_gradient_alignment"


def test_gradient_selection_is_reused(gstore, lm):
    spec = StageSpec(method="less", budget="5", target="q")
    first = select_stage(gstore, "d", spec, lm=lm, options=TINY_OPTIONS)
    second = select_stage(gstore, "d", spec, lm=lm, options=TINY_OPTIONS)
    assert second.reused and second.selection_id == first.selection_id


@pytest.mark.slow  # gradient passes on a tiny model: make test-slow
def test_mask_for_an_existing_selection(gstore, lm):
    sel = select_stage(gstore, "d", StageSpec(method="random", budget="6"))
    info = mask_for_selection(gstore, sel.selection_id, lm, "20%")
    rec = get_mask_record(gstore, sel.selection_id)
    assert rec["info"] == info and info["method"] == "dualsft"
    assert info["scope_density"] == pytest.approx(0.20, abs=0.01)
    assert sha256(gstore.artifacts / rec["path"]) == rec["sha256"]
    assert rec["model"] == lm.fingerprint
    # the selection itself is untouched
    assert selection_sample_ids(gstore, sel.selection_id) == sel.sample_ids


def test_mask_for_an_empty_selection_raises(gstore, lm):
    from curator.store.selection_rows import SelectionRecord, save_selection

    sid = save_selection(gstore, SelectionRecord("d", 1, "instruction", "random", "1", 16, 0),
                         [])
    with pytest.raises(ValueError, match="no members to build a mask"):
        mask_for_selection(gstore, sid, lm)


def test_store_mask_records_exact_densities(gstore, lm):
    sel = select_stage(gstore, "d", StageSpec(method="random", budget="2"))
    params = dict(lm.model.named_parameters())
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.1.self_attn.k_proj.weight"
    mask = {q: torch.ones_like(params[q], dtype=torch.bool),
            k: torch.zeros_like(params[k], dtype=torch.bool)}
    info = store_mask(gstore, sel.selection_id, lm, mask, "50%", {"note": "hand-made"})
    n_q, n_k = params[q].numel(), params[k].numel()
    assert info["scope_density"] == pytest.approx(n_q / (n_q + n_k))
    assert info["overall"]["selected"] == n_q
    assert info["overall"]["total"] == sum(p.numel() for p in lm.model.parameters())
    assert info["note"] == "hand-made" and "per_tensor" not in info
    rec = get_mask_record(gstore, sel.selection_id)
    assert (rec["n_kept"], rec["sha256"]) == (n_q, sha256(gstore.artifacts / rec["path"]))
    back = load_mask(gstore.artifacts / rec["path"])
    assert torch.equal(back[q], mask[q]) and torch.equal(back[k], mask[k])
