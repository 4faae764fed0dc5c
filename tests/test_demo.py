"""The demo end to end with a tiny model on a trimmed copy of the sample data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from curator.demo import DEMO_DATASET, MALFORMED_DATASET, TARGET_DATASET, run_demo
from curator.outputs.subsets import load_export, verify_export
from curator.sample_data import FILES, SAMPLE_DATA_DIR
from curator.store import Store
from curator.store.datasets import list_versions
from curator.store.selection_rows import get_mask_record, get_selection
from curator.testing import tiny_loaded_model

KEEP_LINES = {"v1": 16, "v2": 8, "v3": 9, "target": 3}   # v3.csv: header + 8 rows


def trimmed_sample_data(folder: Path) -> Path:
    folder.mkdir()
    for key, name in FILES.items():
        src = SAMPLE_DATA_DIR / name
        if key in KEEP_LINES:
            lines = src.read_bytes().splitlines(keepends=True)[:KEEP_LINES[key]]
            (folder / name).write_bytes(b"".join(lines))
        else:
            shutil.copyfile(src, folder / name)
    return folder


@pytest.mark.slow  # the whole demo: make test-slow
def test_run_demo_with_a_tiny_model(tmp_path):
    data = trimmed_sample_data(tmp_path / "data")
    store = Store(tmp_path / "store", lock_timeout=10)
    lines: list[str] = []
    report = run_demo(store, data_dir=data, export_dir=tmp_path / "exports",
                      echo=lines.append, model_loader=lambda: tiny_loaded_model("llama"))

    assert [r.name for r in report.stages] == ["instruction", "task", "continual-v2",
                                               "continual-v3"]
    assert [r.stage for r in report.stages] == ["instruction", "task", "continual",
                                                "continual"]
    assert [r.function for r in report.stages] == ["facility_location", "flvmi", "flcg", "flcg"]
    assert [r.version for r in report.stages] == [1, 1, 2, 3]
    assert [v.version for v in list_versions(store, DEMO_DATASET)] == [1, 2, 3]
    assert [v.version for v in list_versions(store, TARGET_DATASET)] == [1]
    assert list_versions(store, MALFORMED_DATASET)[0].n_quarantined > 0

    instruction, task, cont2, cont3 = report.stages
    assert instruction.n_pool == 16 and instruction.n_selected == round(0.3 * 16)
    assert get_selection(store, task.selection_id).target == f"{TARGET_DATASET}:1"
    assert get_selection(store, cont2.selection_id).parent == instruction.selection_id
    assert get_selection(store, cont3.selection_id).parent == cont2.selection_id

    # exports on disk, each matching its manifest; the last one carries the mask
    for r in report.stages:
        assert Path(r.export).parent == (tmp_path / "exports").resolve()
        assert verify_export(r.export) == []
        assert len(load_export(r.export).samples) == r.n_selected
    assert cont3.mask is not None and get_mask_record(store, cont3.selection_id) is not None
    assert (Path(cont3.export) / "mask.safetensors").exists()
    assert all(r.mask is None for r in report.stages[:3])

    text = "\n".join(lines)
    assert "== summary ==" in text and "DualSFT mask for " + cont3.selection_id in text
    assert store.runs(kind="curate")[0]["status"] == "done"
