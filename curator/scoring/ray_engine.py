"""Scoring on Ray: a pool of actors, each holding the model once, fed shards by the driver.

The driver (the process that runs ``curator score``) keeps everything that touches the
store: it builds the candidate pairs, drops those already stored, splits the rest into the
units the local engine would score (whole prefix groups, so the key/value reuse still pays:
``utility.pair_units``) and hands one unit per task to the actors. It commits what they
return in short transactions (``jobs._PairJob``; chunks that arrive together in one, up to
``merge_pairs``), so the store stays the single writer, the
app keeps reading, and a killed driver resumes from what was committed: the rerun drops the
stored pairs first. A killed actor is restarted by Ray (the model loads again) and its shard
is retried (``max_restarts`` / ``max_task_retries``); an actor that keeps dying fails the
run after ``retries`` restarts.

d(i), each target's distance without an example, is computed first, once per target, in
shards of its own, batched as the local engine batches it; every pair shard then gets its
targets' d(i), so no two actors compute the same target and the utilities are the local
engine's (bit for bit on the same hardware and thread count: the same batches).

Actors: one per GPU with ``num_gpus=1`` where the cluster has GPUs; else CPU actors of
``threads`` threads each (``torch.set_num_threads``), ``workers`` of them. The actors load
the model by the driver's model name and dtype (a path must exist on every node) and refuse
to score when their fingerprint differs from the driver's. Tests and the benchmark pass a
``loader`` instead (a picklable function returning a ``LoadedModel``).

This module imports Ray at the top: import it through ``engine.import_ray_engine``, which
turns a missing Ray into a one-line error.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from tqdm.auto import tqdm

from curator import env
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.embeddings import embed_samples
from curator.scoring.engine_errors import EngineUnavailable
from curator.scoring.ray_reaper import start_reaper, stop_reaper
from curator.scoring.utility import (
    PairChunk,
    UtilityConfig,
    pair_units,
    score_pairs,
    score_targets,
)

Loader = Callable[[], LoadedModel]


def wait_for_cluster(address: str, timeout: float) -> None:
    """Return once a TCP connection to ``address`` (host:port, or ray://host:port) opens;
    EngineUnavailable in one line after ``timeout`` seconds (CURATOR_RAY_TIMEOUT) instead
    of Ray's own retries, which go on for minutes printing warnings. Addresses without a
    port ("auto", "local") are left to Ray, which fails fast when it finds no cluster."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection((host or "127.0.0.1", int(port)),
                                     timeout=max(0.05, min(2.0, left))).close()
            return
        except OSError as exc:
            if time.monotonic() + 0.25 >= deadline:
                raise EngineUnavailable(
                    f"cannot reach the Ray cluster at {address} within {timeout:g} s "
                    f"({exc.strerror or exc}); start it, check --ray-address / RAY_ADDRESS, "
                    "or set CURATOR_RAY_TIMEOUT to wait longer") from exc
            time.sleep(0.25)


def load_by_name(name: str, dtype: Any, trust_remote_code: bool = False) -> LoadedModel:
    """The default actor loader: the driver's model by name, in the driver's dtype (the
    utility config hash records the dtype), on the actor's GPU when it has one."""
    from curator.models import load_model

    return load_model(name, device="auto", dtype=dtype, trust_remote_code=trust_remote_code)


# -- what an actor computes (module functions, so each is one place to read) ---------------

def score_shard(lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                pairs: Sequence[tuple[str, str]], config: UtilityConfig, batch_size: int,
                chunk_pairs: int, target_distances: Mapping[str, float]) -> PairChunk:
    """One unit of pairs, scored as the local engine scores it."""
    return PairChunk.concat(list(score_pairs(
        lm, samples_by_id, pairs, config, batch_size=batch_size, chunk_pairs=chunk_pairs,
        target_distances=target_distances)))


def target_shard(lm: LoadedModel, samples: Sequence[Sample], config: UtilityConfig,
                 batch_size: int) -> dict[str, float]:
    return score_targets(lm, samples, config, batch_size=batch_size)


def embed_shard(lm: LoadedModel, samples: Sequence[Sample], max_length: int,
                batch_size: int) -> np.ndarray:
    return embed_samples(lm, samples, max_length=max_length, batch_size=batch_size)


def quality_shard(lm: LoadedModel, samples: Sequence[Sample], config: Any,
                  batch_size: int) -> Any:
    from curator.scoring.quality import score_quality

    return score_quality(lm, samples, config, batch_size=batch_size)


# The gradient helpers come from their submodules, never the ``curator.scoring.gradients``
# package: the package's statistics hold engines (``curator.scoring.engine``), which import
# this module.

def _scope(lm: LoadedModel, names: Sequence[str]) -> list:
    """The driver's scope (module names, in its order) in this process's model."""
    from curator.scoring.gradients.scope import resolve_scope

    everything = {s.name: s for s in resolve_scope(lm.model, include_head=True,
                                                   include_embeddings=True)}
    return [everything[n] for n in names]


def gradient_shard(lm: LoadedModel, samples: Sequence[Sample], names: Sequence[str],
                   batch_size: int, max_length: int | None, curvature: bool,
                   batches: Sequence[Sequence[int]]) -> tuple:
    """(G, C, n, b) over the driver's batches of this shard, on the CPU for the trip back."""
    from curator.scoring.gradients.sums import gradient_sums

    G, C, n, b = gradient_sums(lm, samples, _scope(lm, names), batch_size, max_length,
                               curvature, batches=batches)
    return {k: v.cpu() for k, v in G.items()}, {k: v.cpu() for k, v in C.items()}, n, b


def sample_score_shard(lm: LoadedModel, samples: Sequence[Sample], u: Mapping[str, Any],
                       names: Sequence[str], batch_size: int, max_length: int | None,
                       norms: bool = False):
    from curator.scoring.gradients.hooks import hook_scores

    u = {k: v.to(lm.device) for k, v in u.items()}
    return hook_scores(lm, samples, u, _scope(lm, names), batch_size, max_length,
                       norms=norms)


class ScorerActor:
    """Holds one model; every method returns (result, seconds spent computing)."""

    def __init__(self, loader: Loader, fingerprint: str, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.lm = loader()
        if self.lm.fingerprint != fingerprint:
            raise RuntimeError(
                f"the Ray worker loaded a different model (fingerprint "
                f"{self.lm.fingerprint}, the driver has {fingerprint}): every node must "
                f"see the same model files")

    def ready(self) -> int:
        return os.getpid()

    def run(self, what: str, *args: Any) -> tuple[Any, float]:
        # The module's functions, looked up on each call (a test replaces one in the
        # actor's process to kill it mid-shard).
        fn = {"pairs": score_shard, "targets": target_shard, "embed": embed_shard,
              "quality": quality_shard, "gradients": gradient_shard,
              "sample_scores": sample_score_shard}[what]
        start = time.perf_counter()
        out = fn(self.lm, *args)
        return out, time.perf_counter() - start


@dataclass
class RunStats:
    """What the last engine call cost: shards, the actors' compute seconds, wall seconds."""

    shards: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    workers: int = 0
    shard_seconds: list[float] = field(default_factory=list)

    @property
    def overhead_per_shard(self) -> float:
        """Actor time not spent computing, per shard: (wall x workers - compute) / shards.
        Includes transfers, scheduling and any actor left idle at the end."""
        if not self.shards:
            return 0.0
        return (self.wall_seconds * self.workers - self.compute_seconds) / self.shards


class RayEngine:
    """Scores on a Ray actor pool (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 threads: int | None = 1, loader: Loader | None = None, retries: int = 3,
                 in_flight: int = 2, merge_pairs: int = 4096) -> None:
        self.address = address
        self.workers = workers
        self.threads = threads
        self.loader = loader
        self.retries = retries
        self.in_flight = in_flight         # tasks queued per actor: hides the round trip
        self.merge_pairs = merge_pairs     # most pairs per commit from chunks ready together
        self.started_cluster = False
        self._reaper = None              # curator.scoring.ray_reaper, for a local cluster
        self.pools: dict[str, list] = {}  # model fingerprint -> actors
        self.last = RunStats()           # the last pair_chunks / embeddings call
        self._since = time.perf_counter()

    # -- cluster and actors -----------------------------------------------------------

    def connect(self) -> None:
        """Join the running Ray (this process's, ``address``, or RAY_ADDRESS), else start a
        local one of ``workers * threads`` CPUs, which ``close`` shuts down."""
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            # checked even when this process already runs Ray: an address the user named
            # that nobody answers on is an error, never silently another cluster
            wait_for_cluster(address, env.ray_timeout())
        if ray.is_initialized():
            return
        quiet = {"include_dashboard": False, "logging_level": logging.ERROR,
                 "log_to_driver": False}
        if address:
            ray.init(address=address, **quiet)
            return
        cpus = (self.workers or os.cpu_count() or 1) * (self.threads or 1)
        ray.init(num_cpus=cpus, num_gpus=0 if not _local_gpus() else None, **quiet)
        self.started_cluster = True
        self._reaper = start_reaper()  # the cluster ends with this process, even a killed one

    def actors(self, lm: LoadedModel) -> list:
        """The actor pool for ``lm`` (started once, each actor loading the model once)."""
        if lm.fingerprint in self.pools:
            return self.pools[lm.fingerprint]
        self.connect()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        threads = self.threads or 1
        if gpus:
            n = self.workers or gpus
            options = {"num_gpus": 1, "num_cpus": 1}
        else:
            n = self.workers or max(1, int(resources.get("CPU", 1)) // threads)
            options = {"num_cpus": threads}
        loader = self.loader or functools.partial(load_by_name, lm.name, lm.dtype)
        cls = ray.remote(ScorerActor).options(max_restarts=self.retries,
                                              max_task_retries=self.retries, **options)
        pool = [cls.remote(loader, lm.fingerprint, None if gpus else threads)
                for _ in range(n)]
        try:
            ray.get([a.ready.remote() for a in pool])  # a load error surfaces here
        except ray.exceptions.RayError as exc:
            for a in pool:
                ray.kill(a)
            raise EngineUnavailable(f"the Ray workers could not load the model: "
                                    f"{_cause(exc)}") from exc
        self.pools[lm.fingerprint] = pool
        return pool

    def close(self) -> None:
        """Stop the actors; shut down the cluster only if this engine started it."""
        if ray.is_initialized():
            for pool in self.pools.values():
                for a in pool:
                    ray.kill(a)
        self.pools.clear()
        if self.started_cluster and ray.is_initialized():
            ray.shutdown()
        self.started_cluster = False
        stop_reaper(self._reaper)
        self._reaper = None

    def _reset(self, pool: list) -> None:
        self.last = RunStats(workers=len(pool))
        self._since = time.perf_counter()

    def _map(self, pool: list, calls: Sequence[tuple]) -> Iterator[tuple[tuple, Any]]:
        """(call, result) of ``actor.run(*call)`` for every call, as they complete."""
        for ready in self._map_ready(pool, calls):
            yield from ready

    def _map_ready(self, pool: list, calls: Sequence[tuple]) -> Iterator[list[tuple]]:
        """Run ``actor.run(*call)`` for every call over the pool, at most ``in_flight``
        per actor, yielding the (call, result) pairs that are ready each time one is
        (not in call order)."""
        queue = deque(calls)
        load = [0] * len(pool)
        pending: dict[Any, tuple[int, tuple]] = {}
        stats = self.last
        while queue or pending:
            for i, actor in enumerate(pool):
                while queue and load[i] < self.in_flight:
                    call = queue.popleft()
                    pending[actor.run.remote(*call)] = (i, call)
                    load[i] += 1
            ray.wait(list(pending), num_returns=1)
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            ready = []
            for ref in done:
                i, call = pending.pop(ref)
                load[i] -= 1
                result, seconds = ray.get(ref)
                stats.shards += 1
                stats.compute_seconds += seconds
                stats.shard_seconds.append(seconds)
                ready.append((call, result))
            stats.wall_seconds = time.perf_counter() - self._since
            yield ready

    # -- the engine interface ---------------------------------------------------------

    def pair_chunks(self, lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                    pairs: Sequence[tuple[str, str]], config: UtilityConfig, *,
                    batch_size: int, chunk_pairs: int,
                    target_distances: Mapping[str, float],
                    progress: bool = False) -> Iterator[PairChunk]:
        # Bad input raises here, before the first chunk is asked for (as score_pairs does).
        units = pair_units(lm, samples_by_id, pairs, config, batch_size=batch_size,
                           chunk_pairs=chunk_pairs)
        return self._pair_chunks(lm, samples_by_id, units, config, batch_size, chunk_pairs,
                                 dict(target_distances), progress)

    def _pair_chunks(self, lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                     units: list[list[tuple[str, str]]], config: UtilityConfig,
                     batch_size: int, chunk_pairs: int, known: dict[str, float],
                     progress: bool) -> Iterator[PairChunk]:
        pool = self.actors(lm)
        self._reset(pool)
        # d(i) in the batches the local engine forms: each unit's targets not seen in an
        # earlier unit, sorted (score_pairs' need_targets). In bf16 a target's d(i) moves
        # by up to 1e-2 with the rows it is batched with, so other batches would make the
        # two engines' utilities differ by that much.
        calls = [("targets", [samples_by_id[t] for t in group], config, batch_size)
                 for group in target_groups(units, known)]
        for _, distances in self._map(pool, calls):
            known.update(distances)
        calls = []
        for unit in units:
            ids = {x for pair in unit for x in pair}
            calls.append(("pairs", {i: samples_by_id[i] for i in ids}, unit, config,
                          batch_size, chunk_pairs, {t: known[t] for t, _ in unit}))
        with tqdm(total=sum(map(len, units)), unit="pair", disable=not progress,
                  desc="utilities (ray)") as bar:
            for ready in self._map_ready(pool, calls):
                # Chunks that arrived together are committed together, up to merge_pairs:
                # one commit of 4,096 pairs costs two of 256 or less (docs/scale.md),
                # so with many actors one transaction per unit would bound the run.
                part: list[PairChunk] = []
                for _, chunk in ready:
                    if part and sum(map(len, part)) + len(chunk) > self.merge_pairs:
                        yield PairChunk.concat(part)
                        part = []
                    part.append(chunk)
                    bar.update(len(chunk))
                yield PairChunk.concat(part)

    def _sample_shards(self, lm: LoadedModel, what: str, samples: Sequence[Sample],
                       args: tuple, *, batch_size: int, part: int, progress: bool,
                       unit: str, desc: str) -> Iterator[tuple[int, list[Sample], Any]]:
        """(start, shard, result) of ``actor.run(what, shard, *args)`` over contiguous
        shards of ``samples`` (``_shard_size``: at most ``part`` each; ``start``: the
        shard's first position in ``samples``), as they complete, with one progress bar
        over the samples."""
        if not samples:
            return
        pool = self.actors(lm)
        self._reset(pool)
        size = _shard_size(len(samples), len(pool), batch_size, part)
        starts = range(0, len(samples), size)
        calls = [(what, list(samples[s:s + size]), *args) for s in starts]
        start_of = {id(call): s for call, s in zip(calls, starts, strict=True)}
        with tqdm(total=len(samples), unit=unit, disable=not progress, desc=desc) as bar:
            for call, result in self._map(pool, calls):
                bar.update(len(call[1]))
                yield start_of[id(call)], call[1], result

    def embeddings(self, lm: LoadedModel, samples: Sequence[Sample], *, max_length: int,
                   batch_size: int, part: int,
                   progress: bool = False) -> Iterator[tuple[list[Sample], np.ndarray]]:
        for _, shard, vectors in self._sample_shards(
                lm, "embed", samples, (max_length, batch_size), batch_size=batch_size,
                part=part, progress=progress, unit="sample", desc="embeddings (ray)"):
            yield shard, vectors

    def quality(self, lm: LoadedModel, samples: Sequence[Sample], config: Any, *,
                batch_size: int, part: int, progress: bool = False) -> Iterator[Any]:
        """The quality prior's rows (``curator.scoring.quality``), shard by shard."""
        for _, _, rows in self._sample_shards(lm, "quality", samples, (config, batch_size),
                                           batch_size=batch_size, part=part,
                                           progress=progress, unit="row",
                                           desc="quality (ray)"):
            yield rows

    def gradient_sums(self, lm: LoadedModel, samples: Sequence[Sample], scope: Sequence,
                      batch_size: int, max_length: int | None, curvature: bool) -> tuple:
        """(G, C, n, b) as ``gradients.gradient_sums`` computes them: the driver plans the
        batches the local engine would run, shards hold whole batches, the sums add up."""
        from curator.scoring.gradients.batching import _max_len, encode_samples, plan_batches

        encoded = encode_samples(lm.tokenizer, samples, _max_len(lm, max_length))
        batches = plan_batches(encoded, batch_size)
        pool = self.actors(lm)
        self._reset(pool)
        names = [s.name for s in scope]
        per_shard = max(1, math.ceil(len(batches) / (4 * len(pool))))
        calls = []
        for s in range(0, len(batches), per_shard):
            group = batches[s:s + per_shard]
            flat = [i for b in group for i in b]
            local, start = [], 0
            for b in group:  # the same batches, indexed into the shard's sample list
                local.append(list(range(start, start + len(b))))
                start += len(b)
            calls.append(("gradients", [samples[i] for i in flat], names, batch_size,
                          max_length, curvature, local))
        if not calls:  # no sample fits: the local sums of nothing (zeros)
            from curator.scoring.gradients.sums import gradient_sums

            return gradient_sums(lm, [], scope, batch_size, max_length, curvature)
        G: dict[str, Any] = {}
        C: dict[str, Any] = {}
        n = n_batches = 0
        for _, (g, c, k, b) in self._map(pool, calls):
            for name in g:
                G[name] = G[name] + g[name] if name in G else g[name]
                C[name] = C[name] + c[name] if name in C else c[name]
            n += k
            n_batches += b
        device = next(lm.model.parameters()).device
        return ({k: v.to(device) for k, v in G.items()}, {k: v.to(device) for k, v in C.items()},
                n, n_batches)

    def sample_scores(self, lm: LoadedModel, samples: Sequence[Sample], u: Mapping[str, Any],
                      scope: Sequence, batch_size: int, max_length: int | None,
                      progress: bool = False, norms: bool = False):
        """``<u, g_n>`` per sample (``gradients.hook_scores``; ``norms``: and ``|g_n|``),
        shards of the samples in order; u travels once through Ray's object store."""
        from curator.scoring.gradients.hooks import SampleScores

        names = [s.name for s in scope]
        total = np.full(len(samples), np.nan)
        per_module = np.full((len(samples), len(names)), np.nan)
        sq = np.full(len(samples), np.nan) if norms else None
        skipped: list[int] = []
        if samples:
            self.actors(lm)  # connect before ray.put
        u_ref = ray.put({k: v.detach().cpu() for k, v in u.items()}) if samples else None
        for start, shard, scores in self._sample_shards(
                lm, "sample_scores", samples, (u_ref, names, batch_size, max_length, norms),
                batch_size=batch_size, part=256, progress=progress, unit="sample",
                desc="gradient scores (ray)"):
            end = start + len(shard)
            total[start:end] = scores.total
            per_module[start:end] = scores.per_module
            if sq is not None:
                sq[start:end] = scores.norms
            skipped += [start + j for j in scores.skipped]
        return SampleScores(total, per_module, names, sorted(skipped), sq)


def target_groups(units: Sequence[Sequence[tuple[str, str]]],
                  known: Mapping[str, float]) -> list[list[str]]:
    """The targets whose d(i) the local engine computes together, in its order: per unit,
    the targets no earlier unit had and ``known`` lacks, sorted (``score_pairs``)."""
    seen = set(known)
    groups = []
    for unit in units:
        new = sorted({t for t, _ in unit} - seen)
        seen.update(new)
        if new:
            groups.append(new)
    return groups


def _shard_size(n: int, n_actors: int, batch_size: int, largest: int) -> int:
    """Enough shards to keep every actor busy (about four each), each at least one batch
    and at most ``largest`` items."""
    return max(1, min(largest, max(batch_size, math.ceil(n / (4 * n_actors)))))


def _cause(exc: BaseException) -> str:
    """The last line of the error an actor raised (Ray wraps it in its traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
