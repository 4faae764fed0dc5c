"""Masks: safetensors round trip, densities, validation against a model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curator.outputs.mask_files import (
    load_mask,
    mask_density,
    mask_metadata,
    save_mask,
    validate_mask,
)
from curator.testing import tiny_loaded_model


def half_mask(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            m = torch.zeros(p.shape, dtype=torch.bool)
            m.view(-1)[: p.numel() // 2] = True
            out[name] = m
    return out


def test_round_trip_and_metadata(tmp_path, tiny_llama):
    mask = half_mask(tiny_llama.model)
    path = save_mask(mask, tmp_path / "sub" / "mask.safetensors",
                     {"model": tiny_llama.fingerprint, "budget": 0.5})
    back = load_mask(path, tiny_llama.model)
    assert set(back) == set(mask)
    assert all(back[k].dtype == torch.bool and torch.equal(back[k], mask[k]) for k in mask)
    assert mask_metadata(path) == {"model": tiny_llama.fingerprint, "budget": "0.5"}
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(0, 2**31 - 1)),
                min_size=1, max_size=4))
def test_round_trip_random_masks(tmp_path_factory, shapes):
    mask = {}
    for i, (a, b, seed) in enumerate(shapes):
        g = torch.Generator().manual_seed(seed)
        mask[f"layer.{i}.weight"] = torch.rand((a, b), generator=g) < 0.3
    path = save_mask(mask, tmp_path_factory.mktemp("m") / "mask.safetensors")
    back = load_mask(path)
    assert set(back) == set(mask) and all(torch.equal(back[k], mask[k]) for k in mask)


def test_densities(tiny_llama):
    mask = half_mask(tiny_llama.model)
    d = mask_density(mask)
    assert d.overall.density == pytest.approx(0.5)
    q = d.per_tensor["model.layers.0.self_attn.q_proj.weight"]
    assert (q.selected, q.total) == (512, 1024)
    assert set(d.per_layer) == {"model.layers.0", "model.layers.1"}
    assert d.per_layer["model.layers.1"].density == pytest.approx(0.5)
    assert set(d.per_kind) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                               "mlp.down_proj"}
    whole = mask_density(mask, tiny_llama.model)  # against every model parameter
    assert whole.overall.total == sum(p.numel() for p in tiny_llama.model.parameters())
    assert whole.overall.density < 0.5
    assert d.as_dict()["overall"]["selected"] == d.overall.selected


def test_mask_for_another_model_is_rejected(tmp_path, tiny_llama):
    gpt2 = tiny_loaded_model("gpt2")
    mask = half_mask(tiny_llama.model)
    with pytest.raises(ValueError, match="another model"):
        validate_mask(mask, gpt2.model)
    path = save_mask(mask, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="another model"):
        load_mask(path, gpt2.model)
    wider = tiny_loaded_model("llama", hidden=64)
    with pytest.raises(ValueError, match="shape"):
        validate_mask(mask, wider.model)
    with pytest.raises(ValueError, match="bool"):
        validate_mask({"model.norm.weight": torch.ones(32)}, tiny_llama.model)
    with pytest.raises(ValueError, match="bool"):
        save_mask({"x": torch.ones(3)}, tmp_path / "bad.safetensors")
