"""Model loading: device and dtype choice, fingerprints, tiny models from disk, the default."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from curator import models
from curator.models import (
    DEFAULT_MODEL,
    ModelLoadError,
    context_length,
    fingerprint_files,
    fingerprint_module,
    load_model,
    pick_device,
    pick_dtype,
    wrap_model,
)
from curator.testing import tiny_causal_lm, tiny_tokenizer

CPU = torch.device("cpu")


# -- device and dtype -----------------------------------------------------------------------


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == CPU
    assert pick_device(torch.device("cpu")) == CPU
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == pick_device(None) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_pick_dtype_explicit():
    assert pick_dtype(CPU, torch.float16) is torch.float16
    assert [pick_dtype(CPU, n) for n in ("bf16", "bfloat16", "fp32", "float32", "fp16",
                                         "float16")] == [torch.bfloat16, torch.bfloat16,
                                                         torch.float32, torch.float32,
                                                         torch.float16, torch.float16]
    with pytest.raises(ValueError, match="unknown dtype 'int8'; use one of auto, bf16"):
        pick_dtype(CPU, "int8")


def test_pick_dtype_auto_on_cpu_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    assert pick_dtype(CPU) is torch.bfloat16
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    assert pick_dtype(CPU, None) is torch.float32


def test_pick_dtype_auto_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype(cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype(cuda) is torch.float16


def test_cpu_supports_bf16_reads_cpu_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    real_path = models.Path

    def fake_path(p, *rest):
        return real_path(fake) if str(p) == "/proc/cpuinfo" else real_path(p, *rest)

    monkeypatch.setattr(models, "Path", fake_path)
    fake.write_text("flags\t: fpu sse avx512f avx512_bf16\n")
    assert models.cpu_supports_bf16() is True
    fake.write_text("flags\t: fpu sse avx2\n")
    assert models.cpu_supports_bf16() is False
    fake.unlink()
    assert models.cpu_supports_bf16() is False


# -- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_module_is_stable_and_sensitive_to_weights():
    tok = tiny_tokenizer()
    a = tiny_causal_lm("llama", vocab_size=len(tok), seed=0)
    b = tiny_causal_lm("llama", vocab_size=len(tok), seed=0)
    fp = fingerprint_module(a, tok)
    assert len(fp) == 16 and fp == fingerprint_module(b, tok) == fingerprint_module(a, tok)
    assert fingerprint_module(tiny_causal_lm("llama", vocab_size=len(tok), seed=1), tok) != fp
    with torch.no_grad():
        b.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert fingerprint_module(b, tok) != fp
    assert fingerprint_module(a) != fp  # the tokenizer enters the hash
    assert fingerprint_module(tiny_causal_lm("qwen2", vocab_size=len(tok)), tok) != fp


def test_fingerprint_files_is_memoised_and_follows_content(tmp_path, monkeypatch):
    """The memo used to be a hidden .NAME.sha256 file in the user's model folder (issue
    28: `eval --model DIR` wrote into DIR); it lives in the cache folder now."""
    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "README.md").write_text("not hashed")
    (model / "generation_config.json").write_text("{}")
    before = sorted(p.name for p in model.iterdir())
    fp = fingerprint_files(model)
    assert sorted(p.name for p in model.iterdir()) == before  # nothing written there
    assert len(list((tmp_path / "cache" / "checksums").iterdir())) == 2  # memo: a stat
    tmp_path = model
    assert fingerprint_files(tmp_path) == fp
    (tmp_path / "README.md").write_text("changed")
    (tmp_path / "generation_config.json").write_text('{"x": 1}')
    assert fingerprint_files(tmp_path) == fp
    (tmp_path / "model.safetensors").write_bytes(b"weightz")  # same size, new mtime
    assert fingerprint_files(tmp_path) != fp


# -- wrapping and loading tiny models -------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_wrap_model(arch):
    tok = tiny_tokenizer()
    tok.pad_token = None
    model = tiny_causal_lm(arch, vocab_size=len(tok))
    lm = wrap_model(model, tok, name="tiny", device="cpu", dtype="fp32")
    assert (lm.name, lm.device, lm.dtype, lm.max_length) == ("tiny", CPU, torch.float32, 512)
    assert lm.fingerprint == fingerprint_module(model, tok)
    assert not lm.model.training
    assert tok.pad_token == tok.eos_token == "</s>"  # a missing pad token falls back to eos
    bf16 = wrap_model(tiny_causal_lm(arch, vocab_size=len(tok)), tok, device="cpu",
                      dtype="bf16")
    assert bf16.dtype is torch.bfloat16
    assert next(bf16.model.parameters()).dtype is torch.bfloat16
    assert bf16.fingerprint == lm.fingerprint  # the fingerprint is of the weights as given


def test_context_length_falls_back():
    class Cfg:
        n_positions = 64

    class Bare(torch.nn.Module):
        config = Cfg()

    assert context_length(Bare()) == 64
    Bare.config = object()
    assert context_length(Bare()) == 2048


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer()
    tiny_causal_lm("llama", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_load_model_from_a_local_folder(saved_tiny):
    lm = load_model(str(saved_tiny), device="cpu", dtype="fp32")
    assert (lm.name, lm.device, lm.dtype) == (str(saved_tiny), CPU, torch.float32)
    assert lm.fingerprint == fingerprint_files(saved_tiny)
    assert load_model(str(saved_tiny), device="cpu", dtype="fp32").fingerprint == lm.fingerprint
    ids = lm.tokenizer("hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape == (1, 5, len(lm.tokenizer))
    assert torch.isfinite(logits).all()
    assert next(lm.model.parameters()).dtype is torch.float32
    assert load_model(str(saved_tiny), device="cpu", dtype="bf16").dtype is torch.bfloat16


def test_trust_remote_code_is_off_by_default(tmp_path, saved_tiny):
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    remote = tmp_path / "remote"
    remote.mkdir()
    for f in saved_tiny.iterdir():
        if not f.name.startswith("."):
            (remote / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    cfg["model_type"] = "evil"
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "configuration_evil.py").write_text(
        "raise RuntimeError('remote code ran')\n")
    with pytest.raises(ModelLoadError, match=r"^cannot load model '.*remote'.*trust_remote_code"):
        load_model(str(remote), device="cpu", dtype="fp32")


class NotATensor:  # an object a weights file should not hold
    pass


def test_a_pickle_with_code_is_refused_in_one_line(tmp_path, saved_tiny):
    """torch's refusal is a dozen lines of advice; the error is one line naming the global."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in saved_tiny.iterdir():
        if not f.name.startswith(".") and f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    state = load_file(next(saved_tiny.glob("*.safetensors")))
    state["extra"] = NotATensor()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder), device="cpu", dtype="fp32")
    assert str(info.value) == (
        f"cannot load model '{folder}': its weights are a pickle file that holds code or "
        f"objects, not only tensors ({__name__}.NotATensor); curator does not run pickled "
        f"code: use a safetensors copy of the model")


def test_load_model_error_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match=r"^cannot load model '.*nothing-here'"):
        load_model(str(tmp_path / "nothing-here"), device="cpu")


# -- the embedded default -------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_scores_a_chat_prompt():
    lm = load_model(None, device="cpu")
    assert lm.name == DEFAULT_MODEL
    assert sum(p.numel() for p in lm.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                            tokenize=False, add_generation_prompt=True)
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape == (1, ids.shape[1], lm.model.config.vocab_size)
    assert torch.isfinite(logits.float()).all()
    assert load_model("default", device="cpu").fingerprint == lm.fingerprint


def test_pad_token_id_falls_back_to_eos_then_zero():
    from types import SimpleNamespace

    from curator.models import pad_token_id

    assert pad_token_id(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
    assert pad_token_id(SimpleNamespace()) == 0
