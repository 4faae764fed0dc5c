"""Masked and layer-subset fine-tuning, optimizer state, eval loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from curator.scoring import gradients as gr
from curator.scoring.encoding import collate, encode
from curator.testing import tiny_loaded_model
from curator.training.finetune import LayerRowWeights, apply_mask, build_optimizer, eval_loss, train


def partial_mask(model) -> dict[str, torch.Tensor]:
    """Half of each layer-0 attention projection; everything else frozen."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "layers.0.self_attn" in name and name.endswith("weight"):
            out[name] = torch.rand(p.shape, generator=g) < 0.5
    return out


def test_masked_coordinates_stay_bit_identical(tiny_lm, make_samples):
    model = tiny_lm.model
    mask = {k: v for k, v in partial_mask(model).items()}
    if not mask:  # gpt2 names: transformer.h.0.attn.c_attn
        g = torch.Generator().manual_seed(0)
        mask = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()
                if n.startswith("transformer.h.0.attn") and n.endswith("weight")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(tiny_lm, None, make_samples(6), mask=mask, steps=3, lr=1e-2, batch_size=3,
                weight_decay=0.1)
    assert res.steps == 3
    after = model.state_dict()
    for name, _ in model.named_parameters():
        if name in mask:
            m = mask[name]
            assert torch.equal(after[name][~m], before[name][~m]), name
            assert not torch.equal(after[name][m], before[name][m]), name
        else:
            assert torch.equal(after[name], before[name]), name
    # every parameter of the scored model is back to requiring grad
    assert all(p.requires_grad for p in model.parameters())


def test_tensor_outside_the_mask_gets_no_optimizer_state(tiny_llama, make_samples):
    model = tiny_llama.model
    mask = partial_mask(model)
    full = "model.layers.1.mlp.up_proj.weight"
    mask[full] = torch.ones_like(dict(model.named_parameters())[full], dtype=torch.bool)
    res = train(tiny_llama, None, make_samples(4), mask=mask, steps=2, lr=1e-3,
                weight_decay=0.1)
    params = dict(model.named_parameters())
    with_state = {n for n, p in params.items() if p in res.optimizer.state}
    assert with_state == set(mask)
    decay = {id(p): g["weight_decay"] for g in res.optimizer.param_groups for p in g["params"]}
    assert decay[id(params[full])] == 0.1  # fully trainable matrix: decayed
    assert all(decay[id(params[n])] == 0.0 for n in mask if n != full)  # masked: no decay


def test_apply_mask_handle_restores(tiny_llama):
    model = tiny_llama.model
    handle = apply_mask(model, partial_mask(model))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "model.layers.1.mlp.up_proj.weight" in frozen
    opt = build_optimizer(model, 1e-3, mask=partial_mask(model))
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    handle.remove()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="selects no parameter"):
        apply_mask(model, {"model.norm.weight": torch.zeros(32, dtype=torch.bool)})
    assert all(p.requires_grad for p in model.parameters())


def _per_sample_grads(model, tok, samples):
    grads = []
    for s in samples:
        e = encode(tok, s.prompt_messages, s.response, 512)
        batch = collate([e], tok.pad_token_id)
        model.zero_grad(set_to_none=True)
        gr.batch_losses(model, batch).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_layerwise_gradient_comes_only_from_each_layers_samples(arch, make_samples):
    lm = tiny_loaded_model(arch)
    model, tok = lm.model, lm.tokenizer
    samples = make_samples(6, seed=1)
    per = _per_sample_grads(model, tok, samples)
    blocks = "transformer.h" if arch == "gpt2" else "model.layers"
    subsets = {f"{blocks}.0": {0, 1, 2}, f"{blocks}.1": {3, 4}}
    idx = [5, 0, 3, 1, 4, 2]  # batch order differs from sample order on purpose
    batch = collate([encode(tok, samples[i].prompt_messages, samples[i].response, 512)
                     for i in idx], tok.pad_token_id)
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with LayerRowWeights(model, subsets) as lw:
        lw.set_batch(idx, torch.device("cpu"))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(out, plain)  # the wrappers do not change the forward value
        gr.per_sample_response_loss(out, batch["labels"]).mean().backward()
    for name, p in model.named_parameters():
        key = next((k for k in subsets if name.startswith(k + ".")), None)
        own = sorted(subsets[key]) if key else list(range(6))  # outside layers: the union
        expected = sum(per[i][name] for i in own) / len(own)
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad(set_to_none=True)
    # wrappers removed: the class forward is back
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_train_with_layer_subsets_matches_a_manual_adamw_step(tiny_llama, make_samples):
    model = tiny_llama.model
    manual = copy.deepcopy(model)
    samples = make_samples(6, seed=2)
    ids = [s.sample_id for s in samples]
    subsets = {"model.layers.0": [0, 1, 2], "model.layers.1": [ids[3], ids[4]]}
    per = _per_sample_grads(manual, tiny_llama.tokenizer, samples[:5])
    lr = 1e-3
    res = train(tiny_llama, None, samples, layer_subsets=subsets, steps=1, lr=lr,
                batch_size=8, outside_layers="frozen")
    assert res.n_train == 5  # the union of the subsets; sample 5 is in none
    opt = torch.optim.AdamW(manual.parameters(), lr=lr, weight_decay=0.0)
    for name, p in manual.named_parameters():
        own = ([0, 1, 2] if name.startswith("model.layers.0.") else
               [3, 4] if name.startswith("model.layers.1.") else None)
        p.grad = None if own is None else sum(per[i][name] for i in own) / len(own)
    opt.step()
    trained = dict(model.named_parameters())
    for name, p in manual.named_parameters():
        torch.testing.assert_close(trained[name], p, rtol=1e-5, atol=2e-6, msg=name)
    assert torch.equal(trained["model.norm.weight"], dict(manual.named_parameters())["model.norm.weight"])


def test_eval_loss_is_mean_of_per_sample_losses(tiny_llama, make_samples):
    from curator.training import evaluate

    assert eval_loss is evaluate.eval_loss  # training's eval is the one loss loop
    samples = make_samples(5, seed=3)
    # "response": every response token, end-of-turn included (tests/training/test_evaluate.py checks
    # the default, the answer's own tokens, by hand)
    got = eval_loss(tiny_llama, samples, batch_size=2, tokens="response")
    direct = []
    for s in samples:
        batch = collate([encode(tiny_llama.tokenizer, s.prompt_messages, s.response, 512)],
                        tiny_llama.tokenizer.pad_token_id)
        with torch.no_grad():
            out = tiny_llama.model(input_ids=batch["input_ids"]).logits
        direct.append(float(torch.nn.functional.cross_entropy(
            out[0, :-1], batch["labels"][0, 1:], ignore_index=-100)))
    assert got == pytest.approx(np.mean(direct), rel=1e-5)
    loss_before = eval_loss(tiny_llama, samples)
    train(tiny_llama, None, samples, epochs=5, lr=3e-3, batch_size=5)
    assert eval_loss(tiny_llama, samples) < loss_before


def test_train_bad_input(tiny_llama, make_samples):
    gpt2 = tiny_loaded_model("gpt2")
    samples = make_samples(3)
    with pytest.raises(ValueError, match="another model"):
        train(tiny_llama, None, samples, mask={n: torch.ones(p.shape, dtype=torch.bool)
                                               for n, p in gpt2.model.named_parameters()})
    with pytest.raises(ValueError, match="no training samples"):
        train(tiny_llama, None, [])
    with pytest.raises(ValueError, match="not in samples"):
        train(tiny_llama, None, samples, layer_subsets={"model.layers.0": ["nope"]})
    with pytest.raises(ValueError, match="tokenizer"):
        train(tiny_llama.model, None, samples)
    with pytest.raises(ValueError, match="outside_layers"):
        train(tiny_llama, None, samples, layer_subsets={}, outside_layers="some")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_on_response_logits_matches_full_logits(arch, make_samples, monkeypatch):
    # Training computes the head only at response positions; the same steps as the loss over
    # the full (B, T, V) logits, with SDPA's padded batches and the short-row attention.
    import curator.training.finetune as ft

    samples = make_samples(7, seed=3)
    runs = []
    for losses_of in (ft.response_losses, gr.batch_losses):
        monkeypatch.setattr(ft, "response_losses", losses_of)
        lm = tiny_loaded_model(arch, seed=0)
        res = train(lm, None, samples, steps=3, lr=1e-2, batch_size=3, seed=1)
        runs.append((res.losses, {k: v.clone() for k, v in lm.model.state_dict().items()}))
    (fast, w_fast), (full, w_full) = runs
    np.testing.assert_allclose(fast, full, rtol=1e-5)
    # AdamW moves a coordinate whose gradient is ~0 by up to lr per step whatever its size,
    # so rounding there shows at ~1e-6 (steps here are up to 3e-2)
    for name, value in w_full.items():
        torch.testing.assert_close(w_fast[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unpadded_micro_batches_train_like_one_padded_batch(arch, make_samples, monkeypatch):
    # On a CPU a batch runs as length-sorted micro-batches (no padding computed) whose
    # gradients add up to the padded batch's: the same losses and weights.
    import curator.training.finetune as ft

    samples = make_samples(7, seed=3, response_words=(1, 40))
    monkeypatch.setattr(ft, "MICRO_BATCH_OVERHEAD", 0)  # split wherever rows differ
    calls = []
    real_collate = ft.collate
    monkeypatch.setattr(ft, "collate", lambda rows, *a: calls.append(len(rows))
                        or real_collate(rows, *a))
    runs = []
    for unpad in (True, False):
        calls.clear()
        lm = tiny_loaded_model(arch, seed=0)
        for m in lm.model.modules():  # gpt2's dropout draws depend on the batch's shape
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        res = train(lm, None, samples, steps=3, lr=1e-2, batch_size=4, seed=1, unpad=unpad,
                    weight_decay=0.1)
        runs.append((res.losses, {k: v.clone() for k, v in lm.model.state_dict().items()},
                     list(calls)))
    (split, w_split, c_split), (whole, w_whole, c_whole) = runs
    assert c_whole == [4, 3, 4] and len(c_split) > 3 and sum(c_split) == 11
    np.testing.assert_allclose(split, whole, rtol=1e-5)
    for name, value in w_whole.items():  # AdamW's rounding at ~0 gradients: see above
        torch.testing.assert_close(w_split[name], value, rtol=1e-4, atol=1e-5)


def test_optimizer_is_fused_on_cpu(tiny_llama):
    opt = build_optimizer(tiny_llama.model, 1e-3)
    assert opt.defaults["fused"] is True
