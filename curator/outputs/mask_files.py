"""Parameter masks: bool tensors keyed by parameter name, stored as safetensors (no pickle).

A mask lists the coordinates fine-tuning may change. A parameter the mask does not name
is frozen as a whole; an entry that is False is frozen too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curator.digests import sha256_file
from curator.scoring.gradients import layer_of, module_kind

Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor shaped like the parameter


@dataclass
class Density:
    selected: int
    total: int

    @property
    def density(self) -> float:
        return self.selected / self.total if self.total else 0.0


@dataclass
class MaskDensity:
    overall: Density  # over the tensors the mask names (model-wide when a model was given)
    per_tensor: dict[str, Density]
    per_layer: dict[str, Density]
    per_kind: dict[str, Density]

    def as_dict(self) -> dict[str, object]:
        def flat(d: Mapping[str, Density]) -> dict[str, dict[str, float]]:
            return {k: {"selected": v.selected, "total": v.total, "density": v.density}
                    for k, v in d.items()}

        return {"overall": {"selected": self.overall.selected, "total": self.overall.total,
                            "density": self.overall.density},
                "per_tensor": flat(self.per_tensor), "per_layer": flat(self.per_layer),
                "per_kind": flat(self.per_kind)}


def mask_density(mask: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> MaskDensity:
    """Selected/total per tensor, per layer, per module kind and overall. With ``model``,
    ``overall.total`` counts every model parameter (what fraction of the model trains)."""
    per_tensor: dict[str, Density] = {}
    per_layer: dict[str, Density] = {}
    per_kind: dict[str, Density] = {}
    for name, m in mask.items():
        d = Density(int(m.sum()), m.numel())
        per_tensor[name] = d
        for key, agg in ((layer_of(name), per_layer), (module_kind(name), per_kind)):
            a = agg.setdefault(key, Density(0, 0))
            a.selected += d.selected
            a.total += d.total
    selected = sum(d.selected for d in per_tensor.values())
    total = (sum(p.numel() for p in model.parameters()) if model is not None
             else sum(d.total for d in per_tensor.values()))
    return MaskDensity(Density(selected, total), per_tensor, per_layer, per_kind)


def validate_mask(mask: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise ValueError unless every mask tensor names a parameter of ``model`` with the
    same shape and is boolean (tied weights may be named by either of their names)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in mask if n not in params]
    if unknown:
        raise ValueError(
            f"the mask does not fit this model: {len(unknown)} of {len(mask)} mask tensors "
            f"name parameters the model does not have (e.g. {unknown[0]!r}); "
            "was the mask made for another model?")
    for name, m in mask.items():
        if m.dtype != torch.bool:
            raise ValueError(f"mask tensor {name!r} has dtype {m.dtype}; masks are bool")
        if tuple(m.shape) != tuple(params[name].shape):
            raise ValueError(
                f"the mask does not fit this model: {name!r} has shape {tuple(m.shape)} in the "
                f"mask but {tuple(params[name].shape)} in the model; was the mask made for "
                "another model?")


def save_mask(mask: Mapping[str, torch.Tensor], path: str | Path,
              metadata: Mapping[str, str] | None = None) -> Path:
    """Write the mask as safetensors (bool tensors); metadata: string key/values
    (model fingerprint, budget...)."""
    from safetensors.torch import save_file

    for name, m in mask.items():
        if m.dtype != torch.bool:
            raise ValueError(f"mask tensor {name!r} has dtype {m.dtype}; masks are bool")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in mask.items()}
    save_file(tensors, str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path


def load_mask(path: str | Path, model: nn.Module | None = None) -> Mask:
    """Read a mask written by save_mask; with ``model``, validate it against the model."""
    from safetensors.torch import load_file

    mask = load_file(str(path))
    if model is not None:
        validate_mask(mask, model)
    return mask


def mask_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def mask_heatmap(path: Path, sha256: str) -> list[dict[str, Any]]:
    """A mask file's density per (layer, module kind), for the app's heatmap, after
    checking the file against ``sha256`` (the checksum its record holds)."""
    if not path.exists():
        raise FileNotFoundError(f"mask file {path} is missing")
    if sha256_file(path) != sha256:
        raise ValueError(f"mask file {path} does not match its recorded checksum")
    cells: dict[tuple[str, str], list[int]] = {}
    for name, m in load_mask(path).items():
        cell = cells.setdefault((layer_of(name), module_kind(name)), [0, 0])
        cell[0] += int(m.sum())
        cell[1] += m.numel()
    return [{"layer": layer, "kind": kind, "kept": kept, "params": total,
             "density": kept / total if total else 0.0}
            for (layer, kind), (kept, total) in sorted(cells.items())]
