"""Shared fixtures: tiny models, temporary stores. Nothing here downloads anything."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests marked `cuda` run on this device. Unset: "cuda", and they skip where torch sees no
# CUDA device. "cpu" runs the same bodies on the CPU, to know they work before GPU time.
CUDA_TEST_DEVICE_ENV = "CURATOR_CUDA_TEST_DEVICE"


def cuda_test_device() -> str:
    return os.environ.get(CUDA_TEST_DEVICE_ENV) or "cuda"


def pytest_collection_modifyitems(config, items):
    """Skip (never deselect) `cuda` tests when their device is CUDA and there is none, so
    a CPU run lists them as skipped with the reason."""
    if not cuda_test_device().startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device ({CUDA_TEST_DEVICE_ENV}=cpu runs these "
                                   "test bodies on the CPU)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda_device():
    """The device of `cuda`-marked tests (CURATOR_CUDA_TEST_DEVICE, default cuda)."""
    import torch

    return torch.device(cuda_test_device())


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


@pytest.fixture(scope="session")
def pair_rows():
    """pair_rows(n, start=0) -> n short, varied prompt/response rows (distinct per index),
    for small workflow stores: arithmetic, reversal and counting questions in turn."""

    words = ("apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano")

    def rows(n: int, start: int = 0) -> list[dict[str, str]]:
        out = []
        for i in range(start, start + n):
            w = words[i % len(words)]
            if i % 3 == 0:
                out.append({"prompt": f"What is {i} plus {i % 7}?", "response": f"{i + i % 7}"})
            elif i % 3 == 1:
                out.append({"prompt": f"Reverse the word {w}{i}.", "response": f"{i}"[::-1]
                            + w[::-1]})
            else:
                out.append({"prompt": f"How many letters are in {w} (item {i})?",
                            "response": f"{len(w)} letters."})
        return out

    return rows


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and two threads spinning against
    each other on a shared 2-core machine make them many times slower. The real-model
    tests (`make test-slow`) set CURATOR_TEST_THREADS to use every core."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("CURATOR_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)
