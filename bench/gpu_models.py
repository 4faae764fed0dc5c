"""Models for bench/gpu_check.sh on a machine with no network.

    python bench/gpu_models.py random SHAPE_DIR OUT_DIR [--layers N] [--seed 0]
        A model folder (safetensors + tokenizer) with SHAPE_DIR's config and tokenizer and
        random weights (the model's own initialiser, seeded). Same architecture and token
        counts as the real model, so the same speed; its scores mean nothing.
    python bench/gpu_models.py find [--min-bytes B] [--max-bytes B]
        Causal LMs already on this machine (Hugging Face caches and a few usual folders) in
        safetensors form, largest first, one "bytes<TAB>path" line each. Models that need
        remote code are left out (curator loads with trust_remote_code off).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SEARCH = ["$HF_HUB_CACHE", "$HF_HOME/hub", "~/.cache/huggingface/hub", "/root/.cache/huggingface/hub",
          "/models", "/opt/models", "/data/models", "/workspace/models"]


def random_model(shape: Path, out: Path, layers: int | None, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(shape)
    if layers:
        cfg.num_hidden_layers = layers
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(shape).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    (out / "RANDOM_WEIGHTS").write_text(
        f"random weights (seed {seed}) in the shape of {shape}: {n} parameters, "
        f"{cfg.num_hidden_layers} layers\n")
    print(out)


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def find_models(min_bytes: int, max_bytes: int) -> list[tuple[int, Path]]:
    found: dict[Path, int] = {}
    for root in SEARCH:
        base = Path(os.path.expanduser(os.path.expandvars(root)))
        if "$" in str(base) or not base.is_dir():
            continue
        # hub caches: models--org--name/snapshots/<rev>/config.json; plain folders: */config.json
        for cfg in [*base.glob("models--*/snapshots/*/config.json"), *base.glob("*/config.json")]:
            folder = cfg.parent.resolve()
            try:
                conf = json.loads(cfg.read_text())
            except (OSError, ValueError):
                continue
            archs = conf.get("architectures") or []
            if "auto_map" in conf or not any(a.endswith("ForCausalLM") for a in archs):
                continue
            if not (folder / "tokenizer.json").exists() and not (
                    folder / "tokenizer_config.json").exists():
                continue
            size = _weights_bytes(folder)
            if min_bytes <= size <= max_bytes:
                found[folder] = size
    return sorted(((s, p) for p, s in found.items()), reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("random")
    r.add_argument("shape", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--layers", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("find")
    f.add_argument("--min-bytes", type=int, default=0)
    f.add_argument("--max-bytes", type=int, default=1 << 62)
    args = ap.parse_args()
    if args.cmd == "random":
        random_model(args.shape, args.out, args.layers, args.seed)
    else:
        for size, path in find_models(args.min_bytes, args.max_bytes):
            print(f"{size}\t{path}")


if __name__ == "__main__":
    main()
