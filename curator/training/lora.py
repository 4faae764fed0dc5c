"""LoRA fine-tuning through peft, honouring a GAST layer map.

Adapters go on the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) inside the transformer
blocks, all of them by default or those whose names end with one of ``target_modules``
("q_proj", "mlp.down_proj", "c_attn"). With a layer map (GAST: layer key -> sample ids),
only layers that have samples get adapters, and each layer's adapters learn from that
layer's samples only: the adapters' ``lora_A`` / ``lora_B`` are ``nn.Linear`` modules under
the layer's name, so ``curator.training.finetune``'s layer-wise row weighting applies to
them as it does to full weights (parameter gradient of layer l = mean over layer l's
samples in the batch).
The map's OTHER_LAYER entry (embeddings, final norm, head) gets no adapter: its samples stay
in the batches, as in full training, but move only the layers that list them.

A DualSFT mask and LoRA are different restrictions (a sparse subset of the full weights
against a low-rank update of whole matrices) and do not combine: LoRA training ignores a
mask; the CLI says so when an export has one.

The base model's weights stay frozen and bit-identical; ``save_pretrained`` on the returned
model writes only the adapter, which ``peft.PeftModel.from_pretrained(base, folder)`` loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

# defined with the other configs (light, for the CLI); re-exported: curator.training.lora.LoraOptions
from curator.config import LoraOptions as LoraOptions
from curator.records import Sample
from curator.scoring.gradients import CONV1D, OTHER_LAYER, layer_of
from curator.training.finetune import TrainResult, train

# peft wraps a causal LM as PeftModelForCausalLM -> LoraModel -> the model, so a module
# "model.layers.0.mlp" of the model is "base_model.model.model.layers.0.mlp" after wrapping.
PEFT_PREFIX = "base_model.model."

INSTALL_HINT = "LoRA training needs peft: pip install 'curator[train]' (or peft)"


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (CONV1D is not None and isinstance(module, CONV1D))


def lora_targets(model: nn.Module, target_modules: Sequence[str] | None = None,
                 layers: Sequence[str] | None = None) -> list[str]:
    """Full names of the modules that get adapters: linear layers inside the blocks whose
    name ends with one of ``target_modules`` (any, when None), in ``layers`` when given."""
    wanted = set(layers) if layers is not None else None
    out = []
    for name, module in model.named_modules():
        layer = layer_of(name)
        if layer == OTHER_LAYER or not _is_linear(module):
            continue
        if wanted is not None and layer not in wanted:
            continue
        if target_modules is not None and not any(
                name == t or name.endswith("." + t) for t in target_modules):
            continue
        out.append(name)
    return out


def add_lora(model: nn.Module, opts: LoraOptions, layers: Sequence[str] | None = None) -> Any:
    """Wrap ``model`` (in place) with LoRA adapters; returns the peft model."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    opts.validate()
    targets = lora_targets(model, opts.target_modules, layers)
    if not targets:
        raise ValueError(
            "no linear layer matches the LoRA target modules"
            + (f" {list(opts.target_modules)}" if opts.target_modules else "")
            + (" in the layers that have samples" if layers is not None else ""))
    modules = dict(model.named_modules())
    conv = [CONV1D is not None and isinstance(modules[t], CONV1D) for t in targets]
    if any(conv) and not all(conv):
        raise ValueError("LoRA targets mix nn.Linear and Conv1D modules; pick one kind "
                         "with --lora-targets")
    config = LoraConfig(r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM",
                        fan_in_fan_out=all(conv),  # Conv1D stores weights (in, out)
                        init_lora_weights=opts.init_weights)
    with warnings.catch_warnings():
        # peft 0.21's PeftModel.__init__ reads transformers' deprecated
        # `is_gradient_checkpointing` (removal in transformers 6): peft's call, not ours.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated",
                                FutureWarning)
        return get_peft_model(model, config)


def train_lora(model: nn.Module, tokenizer: object, samples: Sequence[Sample],
               opts: LoraOptions | None = None,
               layer_subsets: Mapping[str, Sequence[int | str]] | None = None,
               **train_kwargs: Any) -> tuple[Any, TrainResult]:
    """Add LoRA adapters to ``model`` (only on layers with samples when ``layer_subsets``
    is given) and train them with ``curator.training.finetune.train`` (its keyword arguments pass
    through; ``mask`` is not one: see the module docstring). Returns (peft model, result)."""
    if "mask" in train_kwargs:
        raise TypeError("train_lora takes no mask: a sparse mask and LoRA do not combine")
    opts = opts or LoraOptions()
    layers = None
    subsets = None
    if layer_subsets is not None:
        layers = [k for k, v in layer_subsets.items() if k != OTHER_LAYER and len(v)]
        if not layers:
            raise ValueError("no transformer layer has samples: no LoRA adapter to train")
        subsets = {(k if k == OTHER_LAYER else PEFT_PREFIX + k): v
                   for k, v in layer_subsets.items()}
    peft_model = add_lora(model, opts, layers)
    result = train(peft_model, tokenizer, samples, layer_subsets=subsets, **train_kwargs)
    return peft_model, result
