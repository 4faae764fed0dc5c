"""The GPU check's helpers that run without a GPU: local model discovery, the random-weight
model of a given shape, and the script's option handling."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_models = _load("gpu_models")


def _fake_model(folder: Path, arch: str, weight_bytes: int, **extra) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], **extra}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * weight_bytes)
    return folder


def test_find_models_lists_local_causal_lms_largest_first(tmp_path, monkeypatch):
    hub, plain = tmp_path / "hub", tmp_path / "models"
    small = _fake_model(hub / "models--org--small" / "snapshots" / "abc", "LlamaForCausalLM", 100)
    big = _fake_model(plain / "big", "Qwen2ForCausalLM", 300)
    _fake_model(hub / "models--org--remote" / "snapshots" / "abc", "XForCausalLM", 500,
                auto_map={"AutoModelForCausalLM": "x.X"})  # needs remote code: left out
    _fake_model(plain / "encoder", "BertModel", 400)  # not a causal LM
    monkeypatch.setattr(gpu_models, "SEARCH", [str(hub), str(plain), "$NOT_SET_ANYWHERE/x"])
    assert gpu_models.find_models(0, 10**9) == [(300, big.resolve()), (100, small.resolve())]
    assert gpu_models.find_models(200, 10**9) == [(300, big.resolve())]
    assert gpu_models.find_models(0, 200) == [(100, small.resolve())]


def test_random_model_has_the_shape_and_is_seeded(tmp_path):
    from transformers import LlamaConfig

    from curator.models import load_model
    from curator.testing import tiny_tokenizer

    shape = tmp_path / "shape"
    tok = tiny_tokenizer()
    LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(shape)
    tok.save_pretrained(shape)
    gpu_models.random_model(shape, tmp_path / "a", layers=1, seed=0)
    gpu_models.random_model(shape, tmp_path / "b", layers=1, seed=0)
    gpu_models.random_model(shape, tmp_path / "c", layers=None, seed=1)
    a, b, c = (load_model(str(tmp_path / x), device="cpu", dtype="fp32") for x in "abc")
    assert a.model.config.num_hidden_layers == 1 and c.model.config.num_hidden_layers == 3
    assert a.model.config.hidden_size == 32 and len(a.tokenizer) == len(tok)
    assert a.fingerprint == b.fingerprint  # same seed, same weights
    wa = a.model.get_input_embeddings().weight
    wc = c.model.get_input_embeddings().weight
    assert not torch.equal(wa, wc)
    assert "random weights (seed 0)" in (tmp_path / "a" / "RANDOM_WEIGHTS").read_text()


def test_gpu_check_options():
    script = str(ROOT / "bench" / "gpu_check.sh")
    ok = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--dry-run" in ok.stdout
    bad = subprocess.run(["bash", script, "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --nope" in bad.stderr


@pytest.mark.slow  # runs each benchmark on a model: make test-slow
@pytest.mark.parametrize("name", ["bench_utility", "bench_gradients"])
def test_benches_take_a_device(name):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "--device" in out.stdout and "--model" in out.stdout and "--data" in out.stdout
