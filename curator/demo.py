"""`make demo` / `curator demo`: the main job on the project's sample data."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from curator.ingest import ingest
from curator.store import Store
from curator.store.datasets import diff_versions, list_versions

DEMO_DATASET = "demo"
VERSION_FILES = [("v1.jsonl", False), ("v2.jsonl", True), ("v3.csv", True)]


def ingest_sample_versions(store: Store, data_dir: Path, dataset: str = DEMO_DATASET,
                           echo: Callable[[str], None] = print) -> None:
    """Ingest the sample versions in order (v2 and v3 append), unless already there."""
    have = {v.source for v in list_versions(store, dataset)} if _has_dataset(store, dataset) \
        else set()
    for name, append in VERSION_FILES:
        source = str(data_dir / name)
        if source in have:
            echo(f"  {name}: already ingested")
            continue
        summary = ingest(store, source, dataset, append=append)
        for line in summary.lines():
            echo(line)


def _has_dataset(store: Store, dataset: str) -> bool:
    return bool(store.query("SELECT 1 FROM datasets WHERE name = ?", [dataset]))


def run_demo(store: Store, model: str | None = None, data_dir: Path | None = None,
             echo: Callable[[str], None] = print) -> None:
    from curator.sample_data import SAMPLE_DATA_DIR, ensure_sample_data

    data_dir = ensure_sample_data(data_dir or SAMPLE_DATA_DIR)
    echo(f"store: {store.path.resolve()}")
    echo(f"sample data: {data_dir}")
    store.init()
    echo("\n== ingest the three versions ==")
    ingest_sample_versions(store, data_dir, echo=echo)
    echo("\n== versions ==")
    for v in list_versions(store, DEMO_DATASET):
        echo(f"  v{v.version}: {v.n_members} members (+{v.n_added} -{v.n_removed}, "
             f"{v.n_duplicates} duplicates, {v.n_quarantined} quarantined) from "
             f"{Path(v.source).name}")
    versions = [v.version for v in list_versions(store, DEMO_DATASET)]
    for old, new in zip(versions, versions[1:], strict=False):
        d = diff_versions(store, DEMO_DATASET, old, new)
        echo(f"  diff v{old} -> v{new}: added {d.n_added}, removed {d.n_removed}, "
             f"unchanged {d.n_unchanged}")
    echo("\n== model ==")
    from curator.models import load_model

    t0 = time.monotonic()
    lm = load_model(model)
    n_params = sum(p.numel() for p in lm.model.parameters())
    echo(f"  loaded {lm.name} ({n_params / 1e6:.0f}M parameters) on {lm.device} in "
         f"{lm.dtype} in {time.monotonic() - t0:.1f} s; fingerprint {lm.fingerprint}")
