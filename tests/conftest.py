"""Shared fixtures: tiny models, temporary stores. Nothing here downloads anything."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def tiny_lm(request):
    """A tiny randomly initialised causal LM of each architecture family (CPU, fp32)."""
    from curator.testing import tiny_loaded_model

    return tiny_loaded_model(request.param)


@pytest.fixture
def tiny_llama():
    from curator.testing import tiny_loaded_model

    return tiny_loaded_model("llama")


@pytest.fixture
def store(tmp_path):
    """An empty store in a temporary folder (a short lock timeout keeps failures fast)."""
    from curator.store import Store

    return Store(tmp_path / "store", lock_timeout=10)


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(name, rows) -> path: rows are dicts (dumped) or str (written as is)."""
    import json

    def write(name: str, rows: list) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
        return str(path)

    return write
