"""Selections pinned on the tiny model: members in rank order, objectives, functions and
stored configs of every stage of the demo recipe and of every other method, on a trimmed
copy of the sample data.

This pins behaviour across refactors of the stage layer: a change that alters what any
method picks (or the hash that makes a selection reusable) fails here. When a change is
*meant* to alter selections, regenerate the pins and say why in the commit:

    CURATOR_REGEN_PINS=1 python -m pytest -q tests/stages/test_pinned_selections.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from curator.config import Recipe, StageSpec
from curator.demo import TARGET_DATASET, demo_recipe
from curator.runner import run_recipe
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selection_rows import (
    get_mask_record,
    get_selection,
    selection_layers,
    selection_members,
)
from curator.store.trash import trash_samples
from curator.testing import tiny_loaded_model

pytestmark = pytest.mark.slow  # every method and stage end to end on a tiny model: make test-slow

PINS = Path(__file__).parent / "data" / "pinned_selections.json"


def _other_methods(dataset: str) -> list[StageSpec]:
    """Every method besides the demo's DELIFT stages, on the same store."""
    return [
        StageSpec(name="embedding-instruction", method="embedding", budget="30%", version=1),
        StageSpec(name="embedding-task", stage="task", method="embedding", budget="4",
                  version=1, target=TARGET_DATASET),
        StageSpec(name="embedding-continual", stage="continual", method="embedding",
                  budget="0.5", version=2, parent="embedding-instruction", pool="all"),
        StageSpec(name="delift-flmi", stage="task", method="delift", function="flmi",
                  budget="25%", version=1, target=TARGET_DATASET, optimizer="naive"),
        StageSpec(name="random", method="random", budget="5", version=3, seed=3),
        StageSpec(name="full", method="full", budget="100%", version=2),
        StageSpec(name="rds", stage="task", method="rds", budget="30%", version=3,
                  target=TARGET_DATASET),
        StageSpec(name="dualsft", method="dualsft", budget="30%", version=1,
                  param_budget="5%", target=TARGET_DATASET),
        StageSpec(name="gast", method="gast", budget="25%", version=1, seed=1),
        StageSpec(name="less", stage="task", method="less", budget="30%", version=2,
                  target=TARGET_DATASET),
    ]


def _observed(store: Store, report: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in report.stages:
        sel = get_selection(store, r.selection_id)
        members = selection_members(store, r.selection_id)
        mask = get_mask_record(store, r.selection_id)
        out[r.name] = {
            "stage": sel.stage, "method": sel.method, "function": sel.function,
            "version": sel.version, "n_pool": sel.n_pool, "parent": sel.parent is not None,
            "target": sel.target, "objective": sel.objective,
            "members": [m["sample_id"] for m in members],
            "gains": [m["gain"] for m in members],
            "scores": [m["score"] for m in members],
            "layers": selection_layers(store, r.selection_id),
            "config": sel.config,
            "mask_kept": None if mask is None else mask["n_kept"],
        }
    return out


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> dict[str, dict[str, Any]]:
    from tests.test_demo import trimmed_sample_data

    root = tmp_path_factory.mktemp("pins")
    data = trimmed_sample_data(root / "data")
    store = Store(root / "store", lock_timeout=10)
    lm = tiny_loaded_model("llama")
    demo = demo_recipe(data, root / "exports")
    demo.export = None
    out = _observed(store, run_recipe(store, demo, model_loader=lambda: lm,
                                      echo=lambda _: None))
    # one v1 sample in the trash: later selections leave it out and record it
    first = load_samples(store, demo.dataset, 1)[0].sample_id
    trash_samples(store, demo.dataset, [first], reason="pinned test")
    others = Recipe(dataset=demo.dataset, scoring=demo.scoring,
                    stages=_other_methods(demo.dataset), export=None).validate()
    out.update(_observed(store, run_recipe(store, others, model_loader=lambda: lm,
                                           echo=lambda _: None)))
    return json.loads(json.dumps(out))  # the JSON view: tuples -> lists, as in the file


def _close(got: Any, want: Any) -> bool:
    """Equal up to float rounding; None (no objective, no gain) only equals None."""
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) \
            and all(_close(g, w) for g, w in zip(got, want, strict=True))
    if want is None or got is None:
        return got is want
    return got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_selections_are_pinned(observed):
    if os.environ.get("CURATOR_REGEN_PINS"):
        PINS.write_text(json.dumps(observed, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINS.read_text())
    assert sorted(observed) == sorted(pinned)
    for name, want in pinned.items():
        got = observed[name]
        for key in ("stage", "method", "function", "version", "n_pool", "parent", "target",
                    "members", "layers", "mask_kept"):
            assert got[key] == want[key], f"{name}.{key}"
        for key in ("objective", "gains", "scores"):
            assert _close(got[key], want[key]), f"{name}.{key}: {got[key]} != {want[key]}"
        assert got["config"] == want["config"], f"{name}.config"


def test_the_pins_cover_every_method_and_stage(observed):
    from curator.config import METHODS, STAGES

    assert {v["method"] for v in observed.values()} == set(METHODS)
    assert {v["stage"] for v in observed.values()} == set(STAGES)
    # the pinned values are not degenerate: objectives, scores and layer maps are there
    # (unless every candidate was left out as harmful: the tiny random model's utilities are
    # noise, so about half of them are negative and a small continual pool can lose them all)
    # (or left out by the quality prior before that)
    assert all(v["objective"] or v["config"]["harmful_excluded"]
               + v["config"].get("quality", {}).get("n_dropped", 0) == v["n_pool"]
               for v in observed.values() if v["method"] == "delift")
    from curator.vocabulary import PRIOR_OFF_BY_DEFAULT

    assert all(v["config"]["quality"]["n_dropped"] for v in observed.values()
               if v["method"] not in ("random", "full", *PRIOR_OFF_BY_DEFAULT))
    assert all("quality" not in v["config"] for v in observed.values()
               if v["method"] in PRIOR_OFF_BY_DEFAULT)
    assert any(v["config"].get("unfit_excluded") for v in observed.values())
    assert observed["gast"]["layers"] and observed["dualsft"]["mask_kept"]
    assert observed["continual-v3"]["mask_kept"]
    assert observed["embedding-instruction"]["config"]["trashed"]
