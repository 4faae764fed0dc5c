"""kill -9 at every file-system step of `export --force` and `train --force` (issue 28):
afterwards the folder is the old one or the new one, never a mix, and what the killed
process left beside it is put back or removed by the next command (the store's recovery
for an export, the next `train` into the same folder for a model).

A forked child counts the steps (mkdir, write, rename, unlink, chmod, rmtree) of the write
and kills itself just before or just after the n-th; every n of the uninterrupted write is
tried, in a seeded random order, each on a fresh copy of the same starting folders.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from curator.folders import replace_refusal
from curator.ingestion.ingest import ingest
from curator.outputs.subsets import export_selection, verify_export
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selection_rows import SelectionRecord, save_selection
from tests.helpers import write_jsonl

pytestmark = pytest.mark.slow  # kill -9 at every step of a forced export and train, a process each: make test-slow

SEED = 28
STEPS = [(Path, "mkdir"), (Path, "write_text"), (Path, "rename"), (Path, "unlink"),
         (Path, "chmod"), (shutil, "rmtree")]


def _run_killed(work: Callable[[], None], n: int | None, when: str) -> tuple[int, int]:
    """Run ``work`` in a fork; with ``n``, kill -9 at its n-th step. Returns (exit status,
    steps counted)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count steps, die at the n-th
        os.close(read)
        count = [0]

        def wrap(owner, name):
            real = getattr(owner, name)

            def step(*args, **kwargs):
                count[0] += 1
                if count[0] == n and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                out = real(*args, **kwargs)
                if count[0] == n and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
                return out
            setattr(owner, name, step)

        code = 0
        try:
            for owner, name in STEPS:
                wrap(owner, name)
            work()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os.write(write, str(count[0]).encode())
        os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    steps = os.read(read, 64).decode()
    os.close(read)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return rc, int(steps or 0)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store with a selection and its export (jsonl) in ``base/out``."""
    base = tmp_path_factory.mktemp("crash-force")
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(6)]
    store = Store(base / "store", lock_timeout=10)
    ingest(store, write_jsonl(base / "d.jsonl", rows), "d")
    ids = [s.sample_id for s in load_samples(store, "d", 1)][:4]
    sid = save_selection(store, SelectionRecord("d", 1, "instruction", "random", "4", 6, 4),
                         ids, gains=[0.0] * 4)
    (base / "exports").mkdir()
    export_selection(store, sid, base / "exports" / "out")
    return base, sid


def test_kill_9_at_every_step_of_export_force(exported, tmp_path):
    base, sid = exported

    def fresh(i: int) -> Path:
        root = tmp_path / f"try-{i}"
        shutil.copytree(base, root, symlinks=True)
        return root

    def force(root: Path) -> Callable[[], None]:
        return lambda: export_selection(Store(root / "store", lock_timeout=10), sid,
                                        root / "exports" / "out", fmt="messages", force=True)

    root = fresh(0)
    rc, total = _run_killed(force(root), None, "")
    assert rc == 0 and total >= 5
    plans = [(n, when) for n in range(1, total + 1) for when in ("before", "after")]
    random.Random(SEED).shuffle(plans)
    for i, (n, when) in enumerate(plans, 1):
        root = fresh(i)
        rc, _ = _run_killed(force(root), n, when)
        assert rc == -signal.SIGKILL, (n, when)
        Store(root / "store", lock_timeout=10).query("SELECT 1")   # the next command
        out = root / "exports" / "out"
        assert verify_export(out) == [], (n, when)
        fmt = json.loads((out / "manifest.json").read_text())["format"]
        assert fmt in ("jsonl", "messages"), (n, when)              # the old or the new
        assert _hidden(root / "exports") == [], (n, when)
        # and --force replaces it again
        export_selection(Store(root / "store"), sid, out, fmt="alpaca", force=True)
        assert replace_refusal(out) is None and _hidden(root / "exports") == []


def test_kill_9_at_every_step_of_train_force(tmp_path):
    from curator.testing import tiny_loaded_model
    from curator.training.trained import clean_dead_writes, save_trained

    base = tmp_path / "base"
    base.mkdir()
    old = tiny_loaded_model("llama", seed=0)
    new = tiny_loaded_model("llama", seed=1)
    save_trained(old.model, old.tokenizer, base / "t", False, {"which": "old"})

    def fresh(i: int) -> Path:
        root = tmp_path / f"try-{i}"
        shutil.copytree(base, root)
        return root

    def force(root: Path) -> Callable[[], None]:
        return lambda: save_trained(new.model, new.tokenizer, root / "t", True,
                                    {"which": "new"})

    rc, total = _run_killed(force(fresh(0)), None, "")
    assert rc == 0 and total >= 5
    plans = [(n, when) for n in range(1, total + 1) for when in ("before", "after")]
    random.Random(SEED).shuffle(plans)
    for i, (n, when) in enumerate(plans, 1):
        root = fresh(i)
        rc, _ = _run_killed(force(root), n, when)
        assert rc == -signal.SIGKILL, (n, when)
        out = root / "t"
        clean_dead_writes(out)                       # what the next train does first
        assert replace_refusal(out, "train") is None, (n, when)
        which = json.loads((out / "manifest.json").read_text())["which"]
        assert which in ("old", "new"), (n, when)
        assert _hidden(root) == [], (n, when)
        save_trained(new.model, new.tokenizer, out, True, {"which": "again"})
        assert _hidden(root) == [] and replace_refusal(out, "train") is None
