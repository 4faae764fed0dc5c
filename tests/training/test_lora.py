"""LoRA through peft: which modules get adapters, each GAST layer's adapters learn from
that layer's samples only, the base stays frozen, and the saved adapter loads back."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import write_jsonl

pytest.importorskip("peft")

from curator.records import Sample  # noqa: E402
from curator.scoring import gradients as gr  # noqa: E402
from curator.scoring.encoding import collate, encode  # noqa: E402
from curator.testing import tiny_causal_lm, tiny_loaded_model  # noqa: E402
from curator.training.finetune import LayerRowWeights  # noqa: E402
from curator.training.lora import (  # noqa: E402
    PEFT_PREFIX,
    LoraOptions,
    add_lora,
    lora_targets,
    train_lora,
)


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    words = "red green blue cat dog sun moon one two three".split()

    def text(k: int) -> str:
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (k,), generator=g))

    return [Sample.from_pair(f"{i}: {text(4)}?", text(3)) for i in range(n)]


def test_targets_are_block_linears_filtered_by_name_and_layer():
    model = tiny_loaded_model("llama").model
    every = lora_targets(model)
    kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert every == [f"model.layers.{i}.{k}" for i in (0, 1) for k in kinds]  # no lm_head
    assert lora_targets(model, ["q_proj", "mlp.down_proj"], ["model.layers.1"]) == [
        "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    gpt2 = tiny_loaded_model("gpt2").model
    assert lora_targets(gpt2, ["c_attn"]) == ["transformer.h.0.attn.c_attn",
                                              "transformer.h.1.attn.c_attn"]
    with pytest.raises(ValueError, match="no linear layer matches"):
        add_lora(model, LoraOptions(target_modules=("nope",)))


def _per_sample_grads(model, tok, samples):
    grads = []
    for s in samples:
        batch = collate([encode(tok, s.prompt_messages, s.response, 512)], tok.pad_token_id)
        model.zero_grad(set_to_none=True)
        gr.batch_losses(model, batch).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.requires_grad})
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_layers_adapters_get_the_mean_gradient_of_its_own_samples(arch):
    """Reference: per-sample gradients, one sample per backward, averaged by hand."""
    lm = tiny_loaded_model(arch)
    tok = lm.tokenizer
    n_targets = len(lora_targets(lm.model))
    # init_weights=False: lora_B is not zero, so lora_A gets a gradient too.
    model = add_lora(lm.model, LoraOptions(rank=4, init_weights=False))
    samples = make_samples(6, seed=1)
    per = _per_sample_grads(model, tok, samples)
    blocks = "transformer.h" if arch == "gpt2" else "model.layers"
    subsets = {f"{PEFT_PREFIX}{blocks}.0": {0, 1, 2}, f"{PEFT_PREFIX}{blocks}.1": {3, 4}}
    idx = [5, 0, 3, 1, 4, 2]
    batch = collate([encode(tok, samples[i].prompt_messages, samples[i].response, 512)
                     for i in idx], tok.pad_token_id)
    with LayerRowWeights(model, subsets) as lw:
        lw.set_batch(idx, torch.device("cpu"))
        gr.batch_losses(model, batch).mean().backward()
    checked = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
            continue
        key = next(k for k in subsets if name.startswith(k + "."))
        own = sorted(subsets[key])
        expected = sum(per[i][name] for i in own) / len(own)
        assert expected.abs().max() > 0, name  # not vacuous
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7, msg=name)
        checked += 1
    assert checked == 2 * n_targets  # lora_A and lora_B of every target


def test_gast_export_trains_adapters_only_on_layers_with_samples(tmp_path):
    lm = tiny_loaded_model("llama")
    base = copy.deepcopy(lm.model.state_dict())
    samples = make_samples(6, seed=2)
    ids = [s.sample_id for s in samples]
    layers = {"model.layers.0": ids[:3], "model.layers.1": []}
    model, res = train_lora(lm.model, lm.tokenizer, samples,
                            LoraOptions(rank=4, alpha=8, target_modules=("q_proj", "v_proj")),
                            layer_subsets=layers, steps=3, lr=1e-2, batch_size=2)
    assert res.steps == 3 and res.n_train == 3  # the union: layer 0's three samples
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(
        f"{PEFT_PREFIX}model.layers.0.self_attn.{m}.lora_{ab}.default.weight"
        for m in ("q_proj", "v_proj") for ab in "AB")
    # lora_B started at 0 and moved; every base weight is bit-identical.
    b = dict(model.named_parameters())[
        f"{PEFT_PREFIX}model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert b.abs().max() > 0
    after = {k.replace(".base_layer", ""): v
             for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    assert after.keys() == base.keys()
    for name, want in base.items():
        assert torch.equal(after[name], want), name

    # The saved adapter loads onto a fresh copy of the base and gives the same logits.
    from peft import PeftModel

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    fresh = tiny_causal_lm("llama", vocab_size=len(lm.tokenizer))
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits)
        plain = tiny_causal_lm("llama", vocab_size=len(lm.tokenizer))(input_ids=x).logits
        assert not torch.allclose(plain, model(input_ids=x).logits)  # the adapter matters


def test_bad_lora_input():
    lm = tiny_loaded_model("llama")
    samples = make_samples(3)
    with pytest.raises(ValueError, match="rank"):
        train_lora(lm.model, lm.tokenizer, samples, LoraOptions(rank=0), steps=1)
    with pytest.raises(ValueError, match="no transformer layer has samples"):
        train_lora(lm.model, lm.tokenizer, samples, layer_subsets={"model.layers.0": []})
    with pytest.raises(TypeError, match="mask"):
        train_lora(lm.model, lm.tokenizer, samples, mask={})


def test_train_lora_maps_layer_keys_onto_the_adapters():
    """One step of train_lora with two layers' subsets: AdamW's first moment after one
    step is (1 - beta1) * gradient, which must be each layer's own-sample mean."""
    lm = tiny_loaded_model("llama")
    tok = lm.tokenizer
    opts = LoraOptions(rank=4, init_weights=False)
    samples = make_samples(6, seed=3)
    ids = [s.sample_id for s in samples]
    torch.manual_seed(0)
    ref = add_lora(copy.deepcopy(lm.model), opts)
    per = _per_sample_grads(ref, tok, samples)
    torch.manual_seed(0)  # the same adapter initialisation
    model, res = train_lora(lm.model, tok, samples, opts,
                            layer_subsets={"model.layers.0": ids[:3],
                                           "model.layers.1": ids[3:5]},
                            steps=1, batch_size=8, lr=1e-3)
    assert res.n_train == 5
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        own = [0, 1, 2] if f"{PEFT_PREFIX}model.layers.0." in name else [3, 4]
        expected = sum(per[i][name] for i in own) / len(own)
        union = sum(per[i][name] for i in range(5)) / 5
        assert not torch.allclose(expected, union)  # the test can tell them apart
        got = res.optimizer.state[p]["exp_avg"] / 0.1
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7, msg=name)


def _gast_export(tmp_path, with_mask: bool = False):
    """A real export (store, selection with a layer map, optional mask) of four samples:
    layer 0 has three of them, layer 1 none (so the export lists layer 0 only)."""

    from curator.digests import sha256_file
    from curator.ingestion.ingest import ingest
    from curator.outputs.mask_files import save_mask
    from curator.outputs.subsets import export_selection
    from curator.store import Store
    from curator.store.datasets import load_samples
    from curator.store.selection_rows import SelectionRecord, save_mask_record, save_selection

    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}."}
            for i in range(4)]
    store = Store(tmp_path / "store", lock_timeout=10)
    ingest(store, write_jsonl(tmp_path / "d.jsonl", rows), "d")
    ids = [s.sample_id for s in load_samples(store, "d", 1)]
    layers = {"model.layers.0": ids[:3], "model.layers.1": []}
    sid = save_selection(store, SelectionRecord("d", 1, "instruction", "gast", "4", 4, 4),
                         ids, layers=layers)
    if with_mask:
        lm = tiny_loaded_model("llama")
        mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in lm.model.named_parameters()}
        path = save_mask(mask, store.artifacts / "masks" / f"{sid}.safetensors")
        save_mask_record(store, sid, "model-fp", f"masks/{sid}.safetensors",
                         sha256_file(path), 1.0, 1, 1, {})
    return export_selection(store, sid, tmp_path / "export").path


def _cli(*args):
    from click.testing import CliRunner

    from curator.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], prog_name="curator")


def test_cli_train_lora_on_a_gast_export_saves_a_loadable_adapter(tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    export = _gast_export(tmp_path, with_mask=True)
    r = _cli("train", export, "--out", tmp_path / "adapter", "--model", tmp_path / "base",
             "--lora", "--lora-rank", 4, "--lora-targets", "q_proj,v_proj", "--steps", 2,
             "--lr", "1e-2", "--batch-size", 2)
    assert r.exit_code == 0, r.output
    assert "different restrictions; this run trains LoRA adapters and does not apply the " \
           "mask" in r.output
    assert "trained 2 steps on 4 samples as LoRA adapters and 1 layer subsets" in r.output
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["model.layers.0.self_attn.q_proj",
                                             "model.layers.0.self_attn.v_proj"]
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 16.0
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    b = dict(loaded.named_parameters())[
        f"{PEFT_PREFIX}model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert b.abs().max() > 0  # trained (lora_B starts at zero)


def test_cli_train_lora_bad_options_are_one_line(tmp_path):
    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    export = _gast_export(tmp_path)
    r = _cli("train", export, "--out", tmp_path / "a", "--model", tmp_path / "base", "--lora",
             "--lora-targets", "nope", "--steps", 1)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        "error: no linear layer matches the LoRA target modules ['nope'] in the layers that "
        "have samples")


def test_cli_lora_without_peft_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    export = _gast_export(tmp_path)
    r = _cli("train", export, "--out", tmp_path / "a", "--lora")
    assert r.exit_code == 1
    assert r.output.strip() == ("error: LoRA training needs peft: pip install 'curator[train]' "
                                "(or peft)")
