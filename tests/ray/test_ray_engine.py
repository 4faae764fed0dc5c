"""The Ray engine: the same numbers as the local engine, a killed worker's shard retried, a
killed driver resumed with only the missing pairs, and a second run that computes nothing.

Every test shares one local Ray cluster (``conftest.ray_cluster``); each engine is closed
(its actors killed) at the end of its test. Actors load the tiny model with
``curator.testing.tiny_loaded_model`` (the same random weights as the driver's: the
fingerprints are checked).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_OPTIONS, write_jsonl

pytest.importorskip("ray")

from curator.config import ScoringOptions  # noqa: E402
from curator.ingestion.ingest import ingest  # noqa: E402
from curator.scoring import ray_engine  # noqa: E402
from curator.scoring.embeddings import embedder_fingerprint  # noqa: E402
from curator.scoring.engine import LOCAL  # noqa: E402
from curator.scoring.jobs import (  # noqa: E402
    EMBED_MAX_LENGTH,
    ensure_embeddings,
    score_pair_list,
    score_utilities,
    utility_config,
)
from curator.store import Store  # noqa: E402
from curator.store.datasets import load_samples  # noqa: E402
from curator.store.scores import load_embeddings, load_losses  # noqa: E402
from curator.testing import tiny_loaded_model  # noqa: E402

pytestmark = pytest.mark.slow  # Ray: a local cluster, workers killed on purpose: make test-slow

# batch_size 4: units of at most 4 prefix groups, so 20 targets x k=3 make several shards
# batches of 4: several batches per actor from 20 samples
OPTIONS = dataclasses.replace(TINY_OPTIONS, batch_size=4, hubs=0)
TOLERANCE = 1e-5   # fp32 on CPU; shards batch d(i) and embeddings differently from local
SEED = 17


@pytest.fixture(scope="module")
def base(tmp_path_factory, pair_rows) -> Path:
    root = tmp_path_factory.mktemp("ray-base")
    store = Store(root / "store", lock_timeout=10)
    ingest(store, write_jsonl(root / "v1.jsonl", pair_rows(20)), "d")
    return store.path


def copy_store(base: Path, to: Path) -> Store:
    shutil.copytree(base, to)
    return Store(to, lock_timeout=10)


@pytest.fixture(scope="module")
def local(base, lm, tmp_path_factory):
    """The local engine's run on the pool: the reference."""
    store = copy_store(base, tmp_path_factory.mktemp("ray-local") / "store")
    pool = load_samples(store, "d", 1)
    summary = score_utilities(store, lm, pool, pool, OPTIONS, engine=LOCAL)
    assert summary.n_computed == 60
    return store


@pytest.fixture(scope="module")
def engine(ray_cluster):
    """One actor pool for the tests that need no special loader (starting one costs
    seconds: every actor imports torch and loads the model)."""
    eng = ray_engine.RayEngine(workers=2, threads=1,
                               loader=functools.partial(tiny_loaded_model, "llama"))
    yield eng
    eng.close()
    assert not eng.pools


def stored(store: Store, lm) -> dict[tuple[str, str], tuple[float, bool]]:
    chash = utility_config(lm, OPTIONS).config_hash()
    rows = store.query("SELECT target_id, example_id, utility, valid FROM utilities WHERE "
                       "model = ? AND config = ?", [lm.fingerprint, chash])
    return {(t, e): (math.nan if u is None else u, bool(v)) for t, e, u, v in rows}


def assert_same_utilities(got: dict, want: dict) -> float:
    assert set(got) == set(want)
    assert all(got[p][1] == want[p][1] for p in want)
    diff = max(abs(got[p][0] - want[p][0]) for p in want if want[p][1])
    assert diff <= TOLERANCE, diff
    return diff


def test_ray_scores_equal_the_local_engine_then_nothing_new(base, local, lm, engine,
                                                             tmp_path):
    store = copy_store(base, tmp_path / "store")
    pool = load_samples(store, "d", 1)
    first = score_utilities(store, lm, pool, pool, OPTIONS, engine=engine)
    assert (first.n_pairs, first.n_computed, first.n_reused, first.n_embedded) == (60, 60, 0, 20)
    assert store.get_run(first.run_id)["status"] == "done"
    assert engine.last.shards > 2 and engine.last.workers == 2  # several shards, two actors
    assert_same_utilities(stored(store, lm), stored(local, lm))
    # d(i), once per target, equal to the local engine's
    chash = utility_config(lm, OPTIONS).config_hash()
    ids = [s.sample_id for s in pool]
    d_ray, d_local = load_losses(store, lm.fingerprint, chash, ids), \
        load_losses(local, lm.fingerprint, chash, ids)
    assert len(d_ray) == 20
    assert max(abs(d_ray[i] - d_local[i]) for i in ids) <= TOLERANCE
    # embeddings too
    key = embedder_fingerprint(lm, EMBED_MAX_LENGTH)
    e_ray, e_local = load_embeddings(store, key, ids), load_embeddings(local, key, ids)
    assert max(float(np.abs(e_ray[i] - e_local[i]).max()) for i in ids) <= TOLERANCE

    again = score_utilities(store, lm, pool, pool, OPTIONS, engine=engine)
    assert (again.n_computed, again.n_reused, again.n_embedded) == (0, 60, 0)
    assert again.run_id is None


def test_embeddings_and_explicit_pairs_on_ray(base, lm, engine, tmp_path):
    store = copy_store(base, tmp_path / "store")
    pool = load_samples(store, "d", 1)
    emb, n = ensure_embeddings(store, lm, pool, batch_size=4, engine=engine)
    ref, _ = ensure_embeddings(copy_store(base, tmp_path / "ref"), lm, pool, batch_size=4,
                               engine=LOCAL)
    assert n == 20 and emb.shape == ref.shape
    np.testing.assert_allclose(emb, ref, atol=TOLERANCE, rtol=0)
    # what a DELIFT stage asks for when its kernel runs dry: an explicit pair list
    ids = [s.sample_id for s in pool]
    pairs = [(ids[i], ids[j]) for i in range(6) for j in range(6) if i != j]
    got = score_pair_list(store, lm, pool, pairs, OPTIONS, engine=engine)
    ref_store = copy_store(base, tmp_path / "ref2")
    want = score_pair_list(ref_store, lm, pool, pairs, OPTIONS, engine=LOCAL)
    assert got.n_computed == want.n_computed == 30
    assert_same_utilities(stored(store, lm), stored(ref_store, lm))


def test_quality_signals_on_ray_equal_the_local_ones(base, lm, engine, tmp_path):
    from curator.scoring.jobs import ensure_quality

    store = copy_store(base, tmp_path / "store")
    pool = load_samples(store, "d", 1)
    got, n = ensure_quality(store, lm, pool, batch_size=4, engine=engine)
    want, _ = ensure_quality(copy_store(base, tmp_path / "ref"), lm, pool, batch_size=4,
                             engine=LOCAL)
    assert n == 20 and got.sample_id == want.sample_id
    for field in ("loss", "uncond_loss", "stop_nll"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field),
                                   atol=TOLERANCE, rtol=0)
    assert ensure_quality(store, lm, pool, engine=engine)[1] == 0  # stored: nothing again


def _dies_once_loader(marker: str):
    """An actor loader that makes the actor's first pair shard SIGKILL its own process
    (once across restarts: the marker file says it happened)."""

    def load():
        import os
        import signal

        from curator.scoring import ray_engine as engine_module
        from curator.testing import tiny_loaded_model

        real = engine_module.score_shard

        def dies_once(*args, **kwargs):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return real(*args, **kwargs)
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        engine_module.score_shard = dies_once
        return tiny_loaded_model("llama")

    return load


def test_a_killed_worker_is_retried_and_the_result_is_complete(base, local, lm, ray_cluster,
                                                               tmp_path):
    marker = tmp_path / "killed"
    engine = ray_engine.RayEngine(workers=2, threads=1, loader=_dies_once_loader(str(marker)))
    store = copy_store(base, tmp_path / "store")
    pool = load_samples(store, "d", 1)
    try:
        summary = score_utilities(store, lm, pool, pool, OPTIONS, engine=engine)
    finally:
        engine.close()
    assert marker.exists()  # an actor did die mid-run
    assert (summary.n_computed, summary.n_invalid) == (60, 0)
    assert store.get_run(summary.run_id)["status"] == "done"
    assert_same_utilities(stored(store, lm), stored(local, lm))


DRIVER = r'''
import contextlib, functools, json, os, signal, sys
import ray
import curator.scoring.jobs as jobs
from curator.config import ScoringOptions
from curator.scoring.ray_engine import RayEngine
from curator.store import Store
from curator.store.datasets import load_samples
from curator.testing import tiny_loaded_model

store_path, address, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
REAL_ATOMIC, REAL_SAVE = Store.atomic, jobs.save_utilities
chunks = [0]

def save_utilities(*args, **kwargs):
    chunks[0] += 1
    return REAL_SAVE(*args, **kwargs)

@contextlib.contextmanager
def atomic(self):
    outer = not getattr(self._local, "in_tx", False)
    with REAL_ATOMIC(self) as con:
        yield con
    if outer and chunks[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)   # kill -9 just after a chunk's commit

jobs.save_utilities, Store.atomic = save_utilities, atomic
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
store = Store(store_path, lock_timeout=10)
pool = load_samples(store, "d", 1)
options = ScoringOptions(**json.loads(sys.argv[4]))
# merge_pairs=1: one commit per chunk, so "killed after the k-th commit" leaves pairs
# missing however the chunks arrive (merged, a loaded machine's commits held everything)
engine = RayEngine(workers=2, threads=1, loader=functools.partial(tiny_loaded_model, "llama"),
                   merge_pairs=1)
jobs.score_utilities(store, tiny_loaded_model("llama"), pool, pool, options, engine=engine)
print("not killed")
'''


def test_a_killed_driver_resumes_with_only_the_missing_pairs(base, local, lm, engine,
                                                             ray_cluster, tmp_path):
    store_path = tmp_path / "store"
    shutil.copytree(base, store_path)
    # kill -9 after the commit of the 1st to 3rd chunk, drawn by a seeded generator
    kill_after = random.Random(SEED).randint(1, 3)
    options = {k: getattr(OPTIONS, k) for k in ("k", "batch_size", "max_length", "hubs")}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(store_path), ray_cluster,
                           str(kill_after), json.dumps(options)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    store = Store(store_path, lock_timeout=10)
    before = stored(store, lm)
    assert 0 < len(before) < 60
    pool = load_samples(store, "d", 1)
    resumed = score_utilities(store, lm, pool, pool, OPTIONS, engine=engine)
    assert (resumed.n_computed, resumed.n_reused, resumed.n_embedded) == \
        (60 - len(before), len(before), 0)
    after = stored(store, lm)
    assert {p: after[p] for p in before} == before  # committed pairs untouched
    assert_same_utilities(after, stored(local, lm))
    nothing = score_utilities(store, lm, pool, pool, OPTIONS, engine=engine)
    assert nothing.n_computed == 0 and nothing.run_id is None


def test_cli_scores_on_ray_with_the_model_loaded_by_path(base, local, lm, ray_cluster,
                                                         tmp_path):
    """The default actor loader: each actor loads the driver's model from its path (the
    fingerprint of the files must match) in the driver's dtype."""
    from click.testing import CliRunner

    from curator.cli import main
    from curator.models import load_model

    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    store_path = tmp_path / "store"
    shutil.copytree(base, store_path)
    args = ["score", "utility", "-d", "d", "--store", str(store_path), "--model",
            str(model_dir), "--dtype", "fp32", "--k", "3", "--batch-size", "4",
            "--max-length", "128", "--hubs", "0", "--engine", "ray", "--workers", "2"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "pairs: 60 wanted, 60 computed, 0 reused" in first.output
    from_path = load_model(str(model_dir), device="cpu", dtype="fp32")
    chash = utility_config(from_path, OPTIONS).config_hash()
    rows = Store(store_path).query("SELECT target_id, example_id, utility, valid FROM "
                                   "utilities WHERE model = ? AND config = ?",
                                   [from_path.fingerprint, chash])
    got = {(t, e): (math.nan if u is None else u, bool(v)) for t, e, u, v in rows}
    assert_same_utilities(got, stored(local, lm))  # same weights, another fingerprint
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "nothing new to score: 60 pairs" in again.output


def _assert_close_grads(got: dict, want: dict) -> float:
    assert set(got) == set(want)
    worst = 0.0
    for name, w in want.items():
        scale = float(w.abs().max()) or 1.0
        worst = max(worst, float((got[name] - w).abs().max()) / scale)
    assert worst <= 1e-4, worst  # relative to each tensor's largest entry
    return worst


def test_gradient_statistics_and_scores_on_ray_equal_the_local_ones(base, lm, engine):
    """G, c and v_new (sums over shards of whole batches, cross-fitted folds too) and the
    per-sample scores <v_new, g_n> (per shard), against the local computation."""
    from curator.scoring.gradients import alignment_scores, gradient_statistics, resolve_scope

    pool = load_samples(Store(base), "d", 1)
    scope = resolve_scope(lm.model)
    kwargs = {"scope": scope, "batch_size": 3, "max_length": 128, "seed": 1}
    want = gradient_statistics(lm, pool, None, **kwargs)
    got = gradient_statistics(lm, pool, None, engine=engine, **kwargs)
    assert engine.last.shards >= 2
    assert (got.n_pool, got.n_target, got.folds) == (want.n_pool, want.n_target, want.folds)
    for field in ("G", "c", "v_new"):
        _assert_close_grads(getattr(got, field), getattr(want, field))
    for g, w in zip(got.v_new_folds, want.v_new_folds, strict=True):
        _assert_close_grads(g, w)
    s_want = alignment_scores(lm, pool, want, scope, 3, 128)
    s_got = alignment_scores(lm, pool, want, scope, 3, 128, engine=engine)
    assert s_got.module_names == s_want.module_names and s_got.skipped == s_want.skipped
    np.testing.assert_allclose(s_got.total, s_want.total, rtol=1e-4,
                               atol=1e-6 * np.abs(s_want.total).max())
    np.testing.assert_allclose(s_got.per_module, s_want.per_module, rtol=1e-4,
                               atol=1e-6 * np.abs(s_want.per_module).max())
    # gradient norms (DualSFT's normalize "unit") come from the actors too
    n_want = LOCAL.sample_scores(lm, pool, want.v_new, scope, 3, 128, norms=True)
    n_got = engine.sample_scores(lm, pool, want.v_new, scope, 3, 128, progress=True,
                                 norms=True)
    np.testing.assert_allclose(n_got.norms, n_want.norms, rtol=1e-4)
    np.testing.assert_allclose(n_got.total, n_want.total, rtol=1e-4,
                               atol=1e-6 * np.abs(n_want.total).max())


def test_bf16_utilities_are_the_local_engines_bit_for_bit(base, ray_cluster, tmp_path):
    """In bf16 a target's d(i) moves with the rows it is batched with; the engine batches
    d(i) and the pair units as the local engine does, so on the same hardware and thread
    count the utilities are identical, not merely close."""
    lm16 = tiny_loaded_model("llama", dtype="bf16")
    engine = ray_engine.RayEngine(workers=2, threads=1, loader=functools.partial(
        tiny_loaded_model, "llama", dtype="bf16"))
    store = copy_store(base, tmp_path / "store")
    pool = load_samples(store, "d", 1)
    ids = [s.sample_id for s in pool]
    pairs = [(t, e) for t in ids[:12] for e in ids[:12] if t != e]
    options = ScoringOptions(batch_size=4, max_length=128, hubs=0, dtype="bf16")
    try:
        got = score_pair_list(store, lm16, pool, pairs, options, engine=engine)
    finally:
        engine.close()
    ref = copy_store(base, tmp_path / "ref")
    want = score_pair_list(ref, lm16, pool, pairs, options, engine=LOCAL)
    assert got.n_computed == want.n_computed == 132
    chash = utility_config(lm16, options).config_hash()

    def rows(s: Store):
        return sorted(s.query("SELECT target_id, example_id, utility, d_target, d_given, "
                              "valid FROM utilities WHERE config = ?", [chash]))

    assert rows(store) == rows(ref)


def test_d_i_is_batched_as_the_local_engine_batches_it(base, lm, monkeypatch):
    """On the default model in bf16, a target's d(i) moves by about 1e-3 with the rows it
    is batched with; the Ray engine must form the local engine's d(i) batches."""
    import curator.scoring.utility as utility
    from curator.scoring.utility import pair_units, score_pairs

    pool = load_samples(Store(base), "d", 1)
    by_id = {s.sample_id: s for s in pool}
    ids = list(by_id)
    pairs = [(t, e) for t in ids for e in ids[:6] if t != e]
    known = {ids[3]: 0.5}
    config = utility_config(lm, OPTIONS)
    calls = []
    real = utility.score_targets

    def recorded(lm_, samples, *args, **kwargs):
        calls.append([s.sample_id for s in samples])
        return real(lm_, samples, *args, **kwargs)

    monkeypatch.setattr(utility, "score_targets", recorded)
    list(score_pairs(lm, by_id, pairs, config, batch_size=2, chunk_pairs=8,
                     target_distances=known))
    units = pair_units(lm, by_id, pairs, config, batch_size=2, chunk_pairs=8)
    assert len(calls) > 2
    assert ray_engine.target_groups(units, known) == calls


def test_chunks_that_arrive_together_are_committed_together(base, lm, monkeypatch):
    """One transaction per ready batch of chunks, at most ``merge_pairs`` pairs each: a
    commit of 4,096 pairs costs two of 256 or less (docs/scale.md)."""
    from curator.scoring.utility import pair_units, score_pairs

    pool = load_samples(Store(base), "d", 1)
    by_id = {s.sample_id: s for s in pool}
    ids = list(by_id)
    pairs = [(t, e) for t in ids[:8] for e in ids[:8] if t != e]
    config = utility_config(lm, OPTIONS)
    known = {t: 0.25 for t in ids}
    units = pair_units(lm, by_id, pairs, config, batch_size=2, chunk_pairs=8)
    chunks = [next(score_pairs(lm, by_id, u, config, batch_size=2, chunk_pairs=8,
                               target_distances=known)) for u in units]
    sizes = [len(c) for c in chunks]
    assert len(chunks) >= 5 and max(sizes) <= 8
    engine = ray_engine.RayEngine(merge_pairs=16)
    monkeypatch.setattr(engine, "actors", lambda lm_: ["an actor"])
    # three arrive at once, then one, then three
    ready = [[(None, c) for c in chunks[:3]], [(None, chunks[3])],
             [(None, c) for c in chunks[4:]]]
    monkeypatch.setattr(engine, "_map_ready",  # no d(i) calls: every target is known
                        lambda pool, calls: iter(ready if calls else ()))
    got = list(engine.pair_chunks(lm, by_id, pairs, config, batch_size=2, chunk_pairs=8,
                                  target_distances=known))
    # greedy within each ready batch, never across batches, never over 16 pairs
    want: list[int] = []
    for batch in (sizes[:3], sizes[3:4], sizes[4:]):
        want.append(batch[0])
        for n in batch[1:]:
            if want[-1] + n > 16:
                want.append(n)
            else:
                want[-1] += n
    assert [len(c) for c in got] == want
    assert len(got) < len(chunks)
    assert sorted(p for c in got for p in zip(c.target_id, c.example_id, strict=True)) == \
        sorted(pairs)


def test_workers_with_another_model_refuse_to_score(lm, ray_cluster):
    """An actor whose model is not the driver's (other weights at the same path) stops the
    run before anything is scored, with a one-line reason."""
    from curator.scoring.engine import EngineUnavailable

    engine = ray_engine.RayEngine(workers=1, loader=functools.partial(
        tiny_loaded_model, "llama", seed=1))
    try:
        with pytest.raises(EngineUnavailable, match="loaded a different model") as err:
            engine.actors(lm)
    finally:
        engine.close()
    assert "\n" not in str(err.value)
    assert not engine.pools


@pytest.mark.parametrize("method", ["less", "dualsft", "gast"])
def test_a_gradient_stage_on_ray_selects_what_the_local_one_selects(base, lm, tmp_path,
                                                                    ray_cluster, monkeypatch,
                                                                    method):
    """`scoring.engine: ray` reaches the gradient passes of every gradient stage (LESS,
    DualSFT, GAST): the selection and its cached scores are the local engine's."""
    from curator.config import GradientOptions, StageSpec
    from curator.scoring import engine as engines
    from curator.stages import select_stage

    shared = ray_engine.RayEngine(workers=2, threads=1,
                                  loader=functools.partial(tiny_loaded_model, "llama"))
    # the engine `scoring: {engine: ray, workers: 2}` names, with the tiny model's loader
    monkeypatch.setattr(engines, "_SHARED", {(None, 2, 1): shared})
    runs = {}
    for name, engine_keys in (("ray", {"engine": "ray", "workers": 2}), ("local", {})):
        store = copy_store(base, tmp_path / name)
        options = ScoringOptions(batch_size=4, max_length=128, **engine_keys)
        try:
            # DualSFT's warm-up (on by default) keeps its passes here: off to reach ray
            gradient = GradientOptions(warmup_steps=0) if method == "dualsft" \
                else GradientOptions()
            out = select_stage(store, "d", StageSpec(method=method, budget="5", version=1,
                                                     quality="off",
                                                     gradient=gradient),
                               lm=lm, options=options)
        finally:
            engines.close_shared()
        scores = dict(store.query("SELECT sample_id, score FROM gradient_scores "
                                  "WHERE layer = ''"))
        runs[name] = (out.sample_ids, scores)
    assert shared.last.shards >= 2  # the ray run went through the actors
    assert runs["ray"][0] == runs["local"][0]
    got, want = runs["ray"][1], runs["local"][1]
    assert set(got) == set(want) and len(want) == 20
    scale = max(abs(v) for v in want.values())
    assert max(abs(got[i] - want[i]) for i in want) <= 1e-4 * scale
