"""Writing a selection out: the subset in a chosen format, its mask, and a manifest.

Everything is written into a temporary folder beside the target and renamed into place at
the end, so a reader never sees half an export. ``force`` replaces only a previous curator
export that nobody changed: its manifest.json is curator's and intact, it holds no file the
manifest does not list, and every listed file still has its sha256 (``curator.folders``,
the rule every folder curator replaces follows). Anything else (a plain folder, the store or a folder holding it, a symbolic link)
is refused with the reason, never deleted. The manifest lists every file with its sha256
so a consumer can check it. The folder's permissions follow the umask, like any folder
the user creates. Each export is a run in the store naming its temporary folder, so one
killed half way leaves nothing behind once the next command opens the store
(``curator.store.recovery``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.config import TRAIN_DEFAULTS, ExportSpec
from curator.digests import sha256_file
from curator.folders import (
    FolderRefused,
    check_target,
    manifest_digest,
    swap_into_place,
    temp_folder,
    write_manifest,
)
from curator.records import Sample, split_prompt_response
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selection_rows import (
    get_mask_record,
    get_selection,
    selection_layer_scores,
    selection_layers,
    selection_sample_ids,
)
from curator.vocabulary import EXPORT_FORMATS

FORMATS = EXPORT_FORMATS  # defined once, in curator.vocabulary
SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}


class ExportError(ValueError):
    """The export could not be written (message is for the user)."""


@dataclass
class ExportResult:
    path: Path
    files: dict[str, str]   # relative path -> sha256
    n_rows: int
    manifest: dict[str, Any]


def to_row(sample: Sample, fmt: str) -> dict[str, Any]:
    """One sample in an export format."""
    if fmt == "jsonl":
        return {"sample_id": sample.sample_id, "messages": list(sample.messages),
                "prompt": sample.prompt, "response": sample.response,
                "metadata": sample.metadata}
    if fmt == "messages":
        return {"messages": list(sample.messages)}
    if fmt == "alpaca":
        system = [m["content"] for m in sample.messages if m["role"] == "system"]
        # The system prompt goes in its own field, so the instruction must not repeat it
        # (sample.prompt would read "system: ...\n\nuser: ..." for such a sample).
        instruction = split_prompt_response(
            [m for m in sample.messages if m["role"] != "system"])[0] if system \
            else sample.prompt
        row = {"instruction": instruction, "input": "", "output": sample.response}
        if system:
            row["system"] = system[0]
        return row
    if fmt == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]}
                                  for m in sample.messages]}
    raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# LLaMA-Factory's dataset description for each format (its data/README.md): "messages"
# rows are its OpenAI format (sharegpt formatting with role/content tags), "conversations"
# its sharegpt format, and alpaca rows its default format. The "hf" format (a saved
# Dataset folder) has none: LLaMA-Factory reads data files, not save_to_disk folders.
_OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                "assistant_tag": "assistant", "system_tag": "system"}
_LLAMAFACTORY = {
    "jsonl": {"formatting": "sharegpt", "columns": {"messages": "messages"},
              "tags": _OPENAI_TAGS},
    "messages": {"formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": _OPENAI_TAGS},
    "parquet": {"formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": _OPENAI_TAGS},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"}},
    "alpaca": {"columns": {"prompt": "instruction", "query": "input", "response": "output",
                           "system": "system"}},
}


def llamafactory_dataset_info(fmt: str, name: str) -> dict[str, Any] | None:
    """The ``dataset_info.json`` content that lets LLaMA-Factory read an export of format
    ``fmt`` as dataset ``name`` (``dataset_dir`` = the export folder), or None."""
    entry = _LLAMAFACTORY.get(fmt)
    if entry is None:
        return None
    data = "data.parquet" if fmt == "parquet" else "data.jsonl"
    return {name: {"file_name": data, **json.loads(json.dumps(entry))}}


def _write_rows(samples: list[Sample], fmt: str, folder: Path) -> list[Path]:
    if fmt in ("jsonl", "messages", "alpaca", "sharegpt"):
        path = folder / "data.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(to_row(s, fmt), ensure_ascii=False) + "\n")
        return [path]
    rows = [{"sample_id": s.sample_id, "messages": list(s.messages), "prompt": s.prompt,
             "response": s.response, "metadata": json.dumps(s.metadata, ensure_ascii=False)}
            for s in samples]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return [path]
    if fmt == "hf":
        from datasets import Dataset

        target = folder / "hf"
        Dataset.from_list(rows).save_to_disk(str(target))
        return sorted(p for p in target.rglob("*") if p.is_file())
    raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def selected_samples(store: Store, selection_id: str) -> list[Sample]:
    """The selection's samples in pick order, with the version's membership metadata."""
    sel = get_selection(store, selection_id)
    ids = selection_sample_ids(store, selection_id)
    by_id = {s.sample_id: s for s in load_samples(store, sel.dataset, sel.version)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        # A selection over a version's samples always finds them; this means a damaged store.
        raise ExportError(f"{len(missing)} selected samples are not in {sel.dataset} "
                          f"v{sel.version} (first: {missing[0]})")
    return [by_id[i] for i in ids]


def export_selection(store: Store, selection_id: str, out: str | Path,
                     fmt: str = ExportSpec.format, force: bool = False) -> ExportResult:
    """Write selection ``selection_id`` to the folder ``out`` (created; must not exist
    unless ``force``)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = _check_out(store, Path(out), force)
    sel = get_selection(store, selection_id)
    samples = selected_samples(store, selection_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The temporary folder's name is recorded in the run before it exists, so a recovery
    # after kill -9 knows it is curator's to remove (recovery.clean_export_leftovers).
    tmp = temp_folder(out)
    run_id = store.start_run("export", sel.dataset, {"selection_id": selection_id,
                                                     "out": str(out), "tmp": str(tmp)})
    try:
        tmp.mkdir(mode=0o777)  # less the umask, as for any folder the user makes
        written = _write_export(store, selection_id, sel, samples, fmt, tmp)
        swap_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        store.finish_run(run_id, "failed", error=str(exc) or type(exc).__name__)
        raise
    store.finish_run(run_id, "done", result={"out": str(out), "n_rows": len(samples)})
    return ExportResult(out, written[0], len(samples), written[1])


def _check_out(store: Store, given: Path, force: bool) -> Path:
    """The folder to write, absolute; ExportError with the reason when it may not be
    written (curator.folders.check_target: the one rule for every folder curator
    replaces)."""
    try:
        return check_target(given, force=force, kind="export", protected=store.path)
    except FolderRefused as exc:
        raise ExportError(str(exc)) from exc


def _write_export(store: Store, selection_id: str, sel: Any, samples: list[Sample], fmt: str,
                  tmp: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Write rows, mask, layers and manifest into ``tmp``; returns (files, manifest)."""
    written = _write_rows(samples, fmt, tmp)
    mask = get_mask_record(store, selection_id)
    if mask is not None:
        src = store.artifacts / mask["path"]
        if sha256_file(src) != mask["sha256"]:
            raise ExportError(f"mask file {src} does not match its recorded checksum")
        shutil.copyfile(src, tmp / "mask.safetensors")
        written.append(tmp / "mask.safetensors")
    layers = selection_layers(store, selection_id)
    if layers:
        path = tmp / "layers.json"
        path.write_text(json.dumps(layers, indent=1))
        written.append(path)
    layer_scores = selection_layer_scores(store, selection_id) if layers else {}
    if layer_scores:  # GAST: what `train` samples each batch's per-layer rows by
        path = tmp / "layer_scores.json"
        path.write_text(json.dumps(layer_scores, indent=1))
        written.append(path)
    info = llamafactory_dataset_info(fmt, f"curator_{sel.selection_id}")
    if info is not None:
        path = tmp / "dataset_info.json"
        path.write_text(json.dumps(info, indent=2))
        written.append(path)
    manifest = write_manifest(tmp, _manifest(sel, fmt, samples, mask, layers, layer_scores),
                              written)
    return manifest["files"], manifest


def _manifest(sel: Any, fmt: str, samples: list[Sample],
              mask: dict[str, Any] | None, layers: dict[str, list[str]],
              layer_scores: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    from curator import __version__

    return {
        "curator_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "selection": {
            "selection_id": sel.selection_id, "dataset": sel.dataset, "version": sel.version,
            "stage": sel.stage, "method": sel.method, "function": sel.function,
            "budget": sel.budget, "n_pool": sel.n_pool, "n_selected": sel.n_selected,
            "objective": sel.objective, "parent": sel.parent, "target": sel.target,
            "config": sel.config,
        },
        "model_fingerprint": sel.model,
        "format": fmt,
        "n_rows": len(samples),
        "sample_ids": [s.sample_id for s in samples],
        "mask": None if mask is None else {
            "file": "mask.safetensors", "density": mask["density"],
            "n_params": mask["n_params"], "n_kept": mask["n_kept"], "info": mask["info"]},
        "layers": {k: len(v) for k, v in layers.items()} or None,
        # GAST: the rows some layer trains on (the data budget) and, per layer, the rows it
        # scored (per-batch sampling draws a layer's rows from these only)
        "union": len(set().union(*map(set, layers.values()))) if layers else None,
        "layer_scores": {k: len(v) for k, v in layer_scores.items()} or None,
    }


def verify_export(path: str | Path) -> list[str]:
    """Problems found checking an export against its manifest (empty list: all good): files
    missing, changed or not listed (hidden files such as .DS_Store aside), and a manifest
    edited after it was written."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ["missing manifest.json"]
    except (OSError, ValueError) as exc:
        return [f"manifest.json is not readable JSON ({exc})"]
    problems = []
    digest = manifest.get("manifest_sha256")
    if digest is not None and digest != manifest_digest(manifest):
        problems.append("manifest.json was edited after export (its digest does not match)")
    listed = manifest.get("files") or {}
    for rel, sha in listed.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"missing {rel}")
        elif sha256_file(f) != sha:
            problems.append(f"checksum mismatch {rel}")
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if f.is_file() and rel.as_posix() not in listed and str(rel) != "manifest.json" \
                and not any(part.startswith(".") for part in rel.parts):
            problems.append(f"unexpected file {rel.as_posix()} (not in the manifest)")
    return problems


@dataclass
class LoadedExport:
    path: Path
    samples: list[Sample]
    mask: dict[str, Any] | None      # parameter name -> bool tensor
    layers: dict[str, list[str]] | None
    manifest: dict[str, Any]
    layer_scores: dict[str, dict[str, float]] | None = None  # GAST: layer -> {id: score}

    def layer_training(self, sampling: str = TRAIN_DEFAULTS.gast_sampling, lora: bool = False,
                       ) -> tuple[dict[str, Any], str | None]:
        """GAST: ``curator.training.finetune.train`` keyword arguments for this export's layers ({}
        without layers), and a note when per-batch sampling ("batch", the default) was asked
        for but cannot run: LoRA takes fixed subsets only, and an export without
        layer_scores.json has no scores to sample by. "static": the fixed subsets."""
        if not self.layers:
            return {}, None
        fixed = {"layer_subsets": self.layers}
        if sampling == "static":
            return fixed, None
        if lora or not self.layer_scores:
            return fixed, ("note: each layer trains on its fixed subset: " + (
                "LoRA takes the static subsets only" if lora else
                "the export has no per-layer scores (layer_scores.json)"))
        config = (self.manifest.get("selection") or {}).get("config") or {}
        return {**fixed, "layer_scores": self.layer_scores,
                "layer_share": config.get("layer_share") or 0.5}, None

    def layer_summary(self, layer_rows: dict[str, int], sampled: bool) -> dict[str, Any] | None:
        """GAST, for a trained model's manifest: the sampling, the union's size and the rows
        each layer learned from (``TrainResult.layer_rows``); None without layers."""
        if not self.layers:
            return None
        return {"sampling": "batch" if sampled else "static",
                "union": len(set().union(*map(set, self.layers.values()))),
                "layer_rows": dict(layer_rows)}


def load_export(path: str | Path, verify: bool = True) -> LoadedExport:
    """Read an export folder back (any format), checking it against its manifest."""
    from curator.ingestion.readers import read_file, sample_from_row

    path = Path(path)
    if not (path / "manifest.json").exists():
        raise ExportError(f"{path} is not a curator export (no manifest.json)")
    if verify:
        problems = verify_export(path)
        if problems:
            raise ExportError(f"{path} does not match its manifest: {'; '.join(problems)}")
    manifest = json.loads((path / "manifest.json").read_text())
    samples: list[Sample] = []
    if (path / "hf").exists():
        from datasets import load_from_disk

        rows = [dict(r) for r in load_from_disk(str(path / "hf"))]
    else:
        data = path / ("data.parquet" if (path / "data.parquet").exists() else "data.jsonl")
        rows = [r.data for r in read_file(data) if r.data is not None]
    for row in rows:
        meta = row.get("metadata")
        meta = json.loads(meta) if isinstance(meta, str) else (meta or {})
        # jsonl rows repeat prompt and response beside the messages: map the messages only.
        # alpaca keeps the system prompt in its own field, which map_row does not read.
        system = row.get("system") if "instruction" in row else None
        samples.append(sample_from_row(
            {"messages": row["messages"]} if "messages" in row else row,
            system=system, metadata=meta))
    mask = None
    if (path / "mask.safetensors").exists():
        from curator.outputs.mask_files import load_mask

        mask = load_mask(path / "mask.safetensors")
    layers = json.loads((path / "layers.json").read_text()) if (path / "layers.json").exists() \
        else None
    scores_file = path / "layer_scores.json"
    layer_scores = json.loads(scores_file.read_text()) if scores_file.exists() else None
    return LoadedExport(path, samples, mask, layers, manifest, layer_scores)
