"""examples/trl_sft.py: TRL's SFTTrainer on a curator export with its mask, on a tiny model."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from tests.helpers import write_jsonl

pytest.importorskip("trl")

from curator.digests import sha256_file  # noqa: E402
from curator.ingestion.ingest import ingest  # noqa: E402
from curator.outputs.mask_files import save_mask  # noqa: E402
from curator.outputs.subsets import export_selection  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.store.datasets import load_samples  # noqa: E402
from curator.store.selection_rows import (  # noqa: E402
    SelectionRecord,
    save_mask_record,
    save_selection,
)
from curator.testing import tiny_loaded_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trl_sft.py"


def _example():
    spec = importlib.util.spec_from_file_location("trl_sft_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def partial_mask(model) -> dict[str, torch.Tensor]:
    """Half of each MLP matrix of layer 0 (random coordinates), nothing else."""
    g = torch.Generator().manual_seed(0)
    mask = {}
    for name, p in model.named_parameters():
        keep = name.startswith("model.layers.0.mlp.")
        mask[name] = (torch.rand(p.shape, generator=g) < 0.5) if keep else \
            torch.zeros(p.shape, dtype=torch.bool)
    return mask


def masked_export(tmp_path: Path, model) -> tuple[Path, dict[str, torch.Tensor]]:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} times 3?"},
                          {"role": "assistant", "content": f"{3 * i}."}]} for i in range(5)]
    rows.append({"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Colour of the sky?"},
                              {"role": "assistant", "content": "Blue."}]})
    store = Store(tmp_path / "store", lock_timeout=10)
    ingest(store, write_jsonl(tmp_path / "d.jsonl", rows), "d")
    ids = [s.sample_id for s in load_samples(store, "d", 1)]
    sid = save_selection(store, SelectionRecord("d", 1, "instruction", "dualsft", "6", 6, 6),
                         ids)
    mask = partial_mask(model)
    path = save_mask(mask, store.artifacts / "masks" / f"{sid}.safetensors")
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    save_mask_record(store, sid, "model-fp", f"masks/{sid}.safetensors", sha256_file(path),
                     kept / total, total, kept, {})
    return export_selection(store, sid, tmp_path / "export", "messages").path, mask


@pytest.mark.slow  # trains with trl: make test-slow
def test_trl_example_trains_only_the_masked_coordinates(tmp_path, capsys):
    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    before = copy.deepcopy(dict(lm.model.named_parameters()))
    export, mask = masked_export(tmp_path, lm.model)

    # TRL reads the export's data file as it is: a messages column of role/content turns.
    ds = _example().load_conversations(export)
    assert len(ds) == 6 and ds.column_names == ["prompt", "completion"]
    assert ds[5]["prompt"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Colour of the sky?"}]
    assert ds[5]["completion"] == [{"role": "assistant", "content": "Blue."}]

    out = _example().main([str(export), "--out", str(tmp_path / "tuned"), "--model",
                           str(tmp_path / "base"), "--steps", "3", "--lr", "1e-2",
                           "--batch-size", "4"])
    assert out["steps"] == 3 and out["masked"] and len(out["losses"]) == 3
    assert "trained 3 steps on 6 samples with mask" in capsys.readouterr().out
    # TRL's loss covers the last assistant turn only, as curator's response-token loss does.
    row = out["trainer"].train_dataset[5]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True)
               if label != -100]
    assert lm.tokenizer.decode(learned) == "Blue.<|im_end|>\n"
    after = dict(out["model"].named_parameters())
    moved = 0
    for name, m in mask.items():
        frozen = ~m
        assert torch.equal(after[name][frozen], before[name][frozen]), name  # bit-identical
        moved += int((after[name][m] != before[name][m]).sum())
    assert moved > 0.9 * sum(int(m.sum()) for m in mask.values())  # the kept ones trained
    assert (tmp_path / "tuned" / "model.safetensors").exists()
    # The mask's hooks are gone and requires_grad is back after training.
    assert all(p.requires_grad for p in out["model"].parameters())
