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


@pytest.fixture(scope="module")
def lm():
    """One tiny llama shared by a module's tests (module scope: loading it per test costs
    more than most of those tests)."""
    from curator.testing import tiny_loaded_model

    return tiny_loaded_model("llama")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny-model work, even under `make test-slow`
    (CURATOR_TEST_THREADS): two OpenMP threads on a busy CPU spin-wait, 100x slower per
    tiny matmul. Modules take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def peaky(lm):
    """Sharpen the random model's output so log-probabilities differ a lot between tokens:
    a misaligned position or label then shows up as a large error, not a 1e-6 one."""
    import torch

    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(40.0)
    return lm


SAMPLE_WORDS = "alpha beta gamma delta river stone cloud seven apple quiet".split()
CHAT_WORDS = "the cat sat on a mat while dogs ran far away under blue sky".split()


def make_samples(n: int, seed: int = 0, prompt_words: tuple[int, int] = (1, 8),
                 response_words: tuple[int, int] = (1, 10)) -> list:
    """n samples "i: <prompt>" -> "<response>" whose word counts are drawn from [lo, hi):
    varied lengths, so batches carry padding; the index keeps every sample distinct."""
    import numpy as np

    from curator.records import Sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(SAMPLE_WORDS, size=int(rng.integers(*prompt_words))))
        response = " ".join(rng.choice(SAMPLE_WORDS, size=int(rng.integers(*response_words))))
        out.append(Sample.from_pair(f"{i}: {prompt}", response))
    return out


def chat_samples(n: int, seed: int = 0) -> list:
    """Short chat samples of varied lengths, every third with a system prompt (so the
    rendered heads differ)."""
    import numpy as np

    from curator.records import Sample

    rng = np.random.default_rng(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(CHAT_WORDS, int(rng.integers(lo, hi))))

    return [Sample.from_pair(text(2, 12), text(1, 8), system="Be kind." if i % 3 == 0 else None)
            for i in range(n)]


# The helpers above as fixtures (tests take them by name); tests/test_cuda.py, which runs
# the same inputs on a device, loads this file by path and calls them directly.
@pytest.fixture(scope="session", name="peaky")
def _peaky():
    return peaky


@pytest.fixture(scope="session", name="make_samples")
def _make_samples():
    return make_samples


@pytest.fixture(scope="session", name="chat_samples")
def _chat_samples():
    return chat_samples


@pytest.fixture
def store(tmp_path):
    """An empty store in a temporary folder (a short lock timeout keeps failures fast)."""
    from curator.store import Store

    return Store(tmp_path / "store", lock_timeout=10)


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(name, rows) -> path: ``tests.helpers.write_jsonl`` below tmp_path (a name,
    or an absolute path as it is); rows are dicts (dumped) or str (written as is)."""
    from tests.helpers import write_jsonl

    return lambda name, rows: write_jsonl(tmp_path / name, rows)


@pytest.fixture(scope="session")
def write_numbered():
    """write_numbered(path, ids, extra=()) -> path: a JSONL file with one row per i in ids,
    {"prompt": "prompt i", "response": "answer i", "n": i}, then the `extra` lines as given
    (bad rows, say)."""
    from tests.helpers import write_jsonl

    def write(path, ids, extra=()) -> str:
        return write_jsonl(path, [*({"prompt": f"prompt {i}", "response": f"answer {i}", "n": i}
                                    for i in ids), *extra])

    return write


@pytest.fixture(scope="session")
def numbered_id():
    """numbered_id(i) -> the sample id of write_numbered's row i."""
    from curator.records import sample_id_for

    def sid(i: int) -> str:
        return sample_id_for([{"role": "user", "content": f"prompt {i}"},
                              {"role": "assistant", "content": f"answer {i}"}])

    return sid


@pytest.fixture(scope="session")
def file_tree():
    """file_tree(folder) -> {relative posix path: bytes} of every file under it, to assert
    that a refused or replaced output left exactly these files."""
    from pathlib import Path

    def tree(path: Path) -> dict[str, bytes]:
        return {p.relative_to(path).as_posix(): p.read_bytes()
                for p in sorted(path.rglob("*")) if p.is_file()}

    return tree


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
