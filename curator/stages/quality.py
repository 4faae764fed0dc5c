"""The quality prior in a stage: score the pool's rows with the model's own loss
(``curator.scoring.quality``, stored and incremental), turn each signal into a z-score
among the row's most similar pool rows, leave out the rows the ``drop`` rule names, and
hand the rest a quality in [0, 1] for the modular term.

Why relative to neighbours: a row's answer loss says as much about its family (a hard task,
long free-text answers) as about the row; compared with the rows most like it, a high loss,
a high IFD or a high end-of-turn NLL marks a row whose answer is off for its prompt
(bench/results/quality_prior_quick.md has the AUCs per kind of corruption). Why also IFD >= 1: a
prompt that does not make its own answer likelier is misaligned whatever its neighbours do
(Cherry LLM and Superfiltering leave such rows out), and a whole neighbourhood of bad rows
would hide from the z-score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curator.scoring.jobs import ensure_embeddings, ensure_quality
from curator.scoring.neighbours import knn
from curator.scoring.quality import QualityRows

AUTO_Z = 0.5            # drop "auto": rows whose signal is this many neighbour SDs above
AUTO_MAX_DROP = 0.3     # ... at most this share of the pool
SD_FLOOR = 0.05         # in log units: neighbours that agree closely do not make tiny SDs
MIN_NEIGHBOURS = 2


@dataclass
class PriorDecision:
    """What the prior decided for one pool (indices into the pool it was given)."""

    z: np.ndarray            # (n,) the chosen signal's z-score (0 where it cannot be said)
    ifd: np.ndarray          # (n,) NaN where the row could not be scored
    dropped: list[int]       # pool indices left out, worst first
    reasons: dict[int, str]  # pool index -> why it was left out

    def quality(self, kept: list[int]) -> np.ndarray:
        """q in (0, 1) for the kept rows, higher for a better row: a logistic of -z."""
        return 1.0 / (1.0 + np.exp(np.clip(self.z[kept], -30, 30)))


def neighbour_z(values: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """z-score of log(values) among each row's neighbours (rows of ``neighbours``: indices,
    -1 for none). 0 where a row's value is not finite or it has fewer than MIN_NEIGHBOURS
    finite neighbours: no evidence either way."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(np.where(values > 0, values, np.nan))
    out = np.zeros(len(v))
    for i, row in enumerate(neighbours):
        if not np.isfinite(v[i]):
            continue
        nv = v[row[row >= 0]]
        nv = nv[np.isfinite(nv)]
        if len(nv) < MIN_NEIGHBOURS:
            continue
        out[i] = (v[i] - nv.mean()) / max(float(nv.std()), SD_FLOOR)
    return out


def signal_z(rows: QualityRows, neighbours: np.ndarray, signal: str) -> np.ndarray:
    """The chosen signal's z-score; "combined" is the mean of the IFD, loss and stop ones."""
    parts = {"ifd": rows.ifd, "loss": rows.loss, "stop": rows.stop_nll}
    if signal == "combined":
        return np.mean([neighbour_z(v, neighbours) for v in parts.values()], axis=0)
    return neighbour_z(parts[signal], neighbours)


def decide_drops(z: np.ndarray, ifd: np.ndarray, drop: str, n_keep_min: int) -> tuple[
        list[int], dict[int, str]]:
    """Pool indices to leave out under ``drop`` ("auto", "N%", "off"), worst first, never so
    many that fewer than ``n_keep_min`` rows remain."""
    n = len(z)
    if drop == "off" or n == 0:
        return [], {}
    order = np.lexsort((np.arange(n), -np.nan_to_num(ifd, nan=0.0), -z))  # worst first
    reasons: dict[int, str] = {}
    if drop == "auto":
        for i in order.tolist():
            if z[i] > AUTO_Z:
                reasons[i] = f"z {z[i]:+.2f} among its neighbours (> {AUTO_Z})"
            elif np.isfinite(ifd[i]) and ifd[i] >= 1.0:
                reasons[i] = f"IFD {ifd[i]:.2f} (the prompt does not make the answer likelier)"
        cap = int(AUTO_MAX_DROP * n)
        # rows flagged by IFD >= 1 come after the z-flagged ones at equal z; keep worst first
        picked = [i for i in order.tolist() if i in reasons][:cap]
    else:
        share = float(drop[:-1]) / 100.0
        picked = order[:int(round(share * n))].tolist()
        reasons = {i: f"among the worst {drop} (z {z[i]:+.2f})" for i in picked}
    picked = picked[:max(0, n - n_keep_min)]
    return picked, {i: reasons[i] for i in picked}


def judge_pool(ctx) -> PriorDecision:
    """Score the pool's quality signals (what the store lacks) and decide the drops."""
    opts = ctx.spec.resolved_quality
    pool = ctx.pools.pool
    engine = ctx.engine
    rows, _ = ensure_quality(ctx.store, ctx.lm, pool, batch_size=ctx.options.batch_size,
                             progress=ctx.progress, engine=engine)
    n = len(pool)
    if n > MIN_NEIGHBOURS:
        emb, _ = ensure_embeddings(ctx.store, ctx.lm, pool, batch_size=ctx.options.batch_size,
                                   engine=engine)
        neighbours = knn(emb, emb, min(opts.k, n - 1), exclude_self=True).indices
    else:
        neighbours = np.full((n, 0), -1, dtype=np.int64)
    z = signal_z(rows, neighbours, opts.signal)
    dropped, reasons = decide_drops(z, rows.ifd, opts.drop, min(ctx.n_select, n))
    return PriorDecision(z, rows.ifd, dropped, reasons)
