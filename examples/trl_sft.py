"""Fine-tune with TRL's SFTTrainer on a curator export, with the export's DualSFT mask.

    pip install 'curator[train]'                      # trl and peft (make setup has them)
    curator export sel-0003 --store ./s --format messages --out ./subset
    python examples/trl_sft.py ./subset --out ./tuned  # --model NAME_OR_PATH, --steps N, ...

The export's data file is read as it is (``datasets.load_dataset`` on data.jsonl or
data.parquet): its ``messages`` column is TRL's conversational format. Each conversation is
split into prompt (the turns before the last) and completion (the last assistant turn),
because on prompt/completion data TRL's loss is on completion tokens only, which is the
response-token loss curator scored and selected with.

The mask: ``curator.training.finetune.apply_mask`` freezes the tensors the mask leaves out
and zeroes the gradient of masked-out coordinates in the others; with AdamW and weight decay
0 (TRL's default, kept here) a frozen coordinate's update is exactly 0, so it stays
bit-identical.
A GAST export's layer subsets need one sample subset per layer, which SFTTrainer's single
batch mean cannot do: such an export is refused here (``curator train`` honours it).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def load_conversations(export_dir: Path) -> Any:
    """The export's rows as a datasets.Dataset of TRL conversational prompt/completion."""
    from datasets import load_dataset

    if (export_dir / "data.parquet").exists():
        ds = load_dataset("parquet", data_files=str(export_dir / "data.parquet"), split="train")
    elif (export_dir / "data.jsonl").exists():
        ds = load_dataset("json", data_files=str(export_dir / "data.jsonl"), split="train")
    else:
        raise SystemExit(f"{export_dir}: no data.jsonl or data.parquet (export with --format "
                         "messages, jsonl or parquet)")
    if "messages" not in ds.column_names:
        raise SystemExit(f"{export_dir}: no messages column (export with --format messages, "
                         "jsonl or parquet)")
    ds = ds.select_columns(["messages"])

    def split(row: dict) -> dict:
        turns = row["messages"]
        if not turns or turns[-1]["role"] != "assistant":
            raise ValueError("a conversation does not end with an assistant turn")
        return {"prompt": turns[:-1], "completion": turns[-1:]}

    return ds.map(split, remove_columns=["messages"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="default: curator's embedded SmolLM2")
    parser.add_argument("--steps", type=int, default=-1, help="overrides --epochs")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--no-mask", action="store_true", help="train every weight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from trl import SFTConfig, SFTTrainer

    from curator.models import load_model
    from curator.outputs.subsets import load_export
    from curator.training.finetune import apply_mask

    exp = load_export(args.export_dir)  # checks every file against the manifest
    if exp.layers:
        raise SystemExit("this export has GAST layer subsets, which SFTTrainer cannot honour; "
                         "train it with `curator train`")
    lm = load_model(args.model, dtype="fp32")
    on_gpu = lm.device.type == "cuda"
    # transformers 5.24 renamed gradient_checkpointing (deprecated, removal in 6); TRL turns
    # it on by default, which a small subset does not need.
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    no_checkpointing = {("activation_checkpointing" if "activation_checkpointing" in names
                         else "gradient_checkpointing"): False}
    config = SFTConfig(
        output_dir=str(args.out), max_steps=args.steps, num_train_epochs=args.epochs,
        learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, seed=args.seed,
        weight_decay=0.0,  # decay would move the coordinates the mask freezes
        bf16=on_gpu and torch.cuda.is_bf16_supported(), use_cpu=not on_gpu,
        save_strategy="no", report_to=[], logging_steps=1, **no_checkpointing)
    handle = None if args.no_mask or exp.mask is None else apply_mask(lm.model, exp.mask)
    try:
        trainer = SFTTrainer(model=lm.model, args=config, processing_class=lm.tokenizer,
                             train_dataset=load_conversations(args.export_dir))
        result = trainer.train()
    finally:
        if handle is not None:
            handle.remove()
    trainer.save_model(str(args.out))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"trained {result.global_step} steps on {len(exp.samples)} samples"
          + (" with mask" if handle is not None else "") + f"; saved to {args.out}")
    return {"steps": result.global_step, "losses": losses, "model": lm.model, "trainer": trainer,
            "masked": handle is not None}


if __name__ == "__main__":
    main()
