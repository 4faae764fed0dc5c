"""The pipeline shared by the CLI, recipes and schedules: a model loaded once and
announced once, ingest once by checksum, a mask built only when missing."""

from __future__ import annotations

import pytest

import curator.models
from curator.config import StageSpec
from curator.pipeline import LazyModel, Pipeline, ingest_once
from curator.store.datasets import list_versions
from curator.store.selection_rows import get_mask_record
from curator.testing import tiny_loaded_model
from tests.helpers import write_jsonl


def test_lazy_model_loads_once_and_says_so_once(monkeypatch):
    calls: list[tuple] = []
    said: list[str] = []
    monkeypatch.setattr(curator.models, "load_model",
                        lambda name, **kw: calls.append((name, kw)) or f"model:{name}")
    lazy = LazyModel("some/model", dtype="fp32", echo=said.append)
    assert not lazy.loaded
    assert lazy() == lazy() == "model:some/model"
    assert calls == [("some/model", {"dtype": "fp32", "trust_remote_code": False})]
    assert said == ["loading model some/model"]
    # a shared cache (a worker's, between runs) loads nothing twice either
    again = LazyModel("some/model", dtype="fp32", echo=said.append, cache=lazy.cache)
    assert again.loaded and again() == "model:some/model" and len(calls) == 1


def test_a_given_loader_is_called_once_and_not_announced():
    said: list[str] = []
    n = []
    lazy = LazyModel(loader=lambda: n.append(1) or "tiny", echo=said.append)
    assert lazy() == lazy() == "tiny" and n == [1] and said == []


def test_ingest_once_skips_the_same_content_under_another_name(store, tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", rows)
    assert ingest_once(store, tmp_path / "a.jsonl", "d").version == 1
    assert ingest_once(store, tmp_path / "b.jsonl", "d") is None
    assert [v.version for v in list_versions(store, "d")] == [1]
    with pytest.raises(ValueError, match="no such input file"):
        ingest_once(store, tmp_path / "missing.jsonl", "d")


def test_ensure_mask_builds_once(store, tmp_path):
    write_jsonl(tmp_path / "d.jsonl",
                [{"prompt": f"What is {i} + 1?", "response": str(i + 1)} for i in range(6)])
    said: list[str] = []
    pipe = Pipeline(store, LazyModel(loader=lambda: tiny_loaded_model("llama")),
                    echo=said.append)
    pipe.ingest_once(tmp_path / "d.jsonl", "d")
    sel = pipe.select("d", StageSpec(method="random", budget="4")).selection_id
    assert not pipe.model.loaded                     # random needs no model
    info = pipe.ensure_mask(sel, "10%", seed=0)
    assert pipe.model.loaded and get_mask_record(store, sel)["info"] == info
    assert said == [f"  DualSFT mask (10% of parameters) for {sel}"]
    assert pipe.ensure_mask(sel, "10%") == info and len(said) == 1  # stored: not rebuilt
