"""Why a sample was selected: its coverage in the kernels its selection maximised.

A DELIFT selection maximises a set function over kernels built from the stored pairwise
utilities of *its own* pool, target set and previous data (``curator.stages.delift``). The
explanation rebuilds those kernels with the stage's own builder
(``curator.stages.delift.delift_kernels``: the same scales and self-coverage) and reads the
sample's column and row:

- facility location (instruction), graph cut: the pool rows it covers, S[i, s];
- FLVMI (task, the paper's form): the targets it covers, S_Q[q, s];
- FLMI (submodlib's form): the pool rows it covers, min(S[i, s], eta * max_q S_Q[i, q]);
- FLCG (continual): the new rows it covers beyond what the previous data covers,
  max(S[i, s] - nu * max_p S_P[i, p], 0).

The kernels are rebuilt from the pairs stored *now*: a later stage may have scored more
pairs among the same rows (docs/design-notes.md), so a value can differ from what greedy saw.
No SQL here: ids come from the store's readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from curator.stages.delift import delift_kernels
from curator.store import Store
from curator.store.datasets import get_samples, resolve_version, version_sample_ids
from curator.store.selection_rows import (
    SelectionRecord,
    get_selection,
    selection_pool_ids,
    selection_sample_ids,
)
from curator.vocabulary import canonical_function

TEXT_CHARS = 400


@dataclass
class SelectionKernels:
    """The kernels one selection was maximised over, with the ids of their axes."""

    function: str
    pool: list[str]
    pool_dataset: str
    rows: list[str] = field(default_factory=list)  # what is covered
    rows_dataset: str = ""
    rows_word: str = "pool samples"
    cover: sp.csr_matrix | None = None  # (rows, pool): S[i, s]
    # FLCG: what the previous data already covers, nu * max_p S_P[i, p], per row
    already: np.ndarray | None = None
    # FLMI: the cap on each pool row's coverage, eta * max_q S_Q[i, q]
    cap: np.ndarray | None = None
    helped: sp.csr_matrix | None = None  # (pool, pool) kernel: who covers a pool sample
    note: str = ""


def _target_ids(store: Store, sel: SelectionRecord) -> tuple[str, list[str]]:
    name, _, version = (sel.target or "").rpartition(":")
    if not name or not version.isdigit():
        name, version = sel.target or "", ""
    v = int(version) if version else resolve_version(store, name, None)
    trashed = set((sel.config or {}).get("trashed") or [])
    return name, [i for i in version_sample_ids(store, name, v) if i not in trashed]


def selection_kernels(store: Store, selection_id: str) -> SelectionKernels | None:
    """The selection's kernels, or None when it was not made from pairwise utilities."""
    sel = get_selection(store, selection_id)
    config = sel.config or {}
    chash = config.get("utility_config")
    if sel.method != "delift" or not sel.model or not chash or not sel.function:
        return None
    fn = canonical_function(sel.function)
    pool = selection_pool_ids(store, selection_id)
    t_name, target = _target_ids(store, sel) if fn in ("flvmi", "flmi") else ("", [])
    prev = selection_sample_ids(store, sel.parent) if fn == "flcg" and sel.parent else []
    # the stage's own builder: the same scales, self-coverage and kernels greedy read
    built = delift_kernels(store, sel.model, chash, fn, pool, target, prev,
                           config.get("self_coverage", "best"))
    out = SelectionKernels(fn, pool, sel.dataset, rows=pool, rows_dataset=sel.dataset)
    out.helped = out.cover = built.get("kernel")  # (pool, pool); FLVMI has none
    if fn == "flvmi":
        out.rows, out.rows_dataset, out.rows_word = target, t_name, "targets"
        out.cover = built["query_kernel"].T.tocsr()  # (targets, pool)
        out.note = ("FLVMI reads only target x pool utilities: what helps this sample "
                    "itself played no part in its selection.")
    elif fn == "flmi":
        eta = float(config.get("eta", 1.0))
        out.cap = eta * np.asarray(built["query_kernel"].max(axis=1).todense()).ravel()
    elif fn == "flcg":
        if "private_kernel" in built:
            nu = float(config.get("nu", 1.0))
            out.already = nu * np.asarray(built["private_kernel"].max(axis=1).todense()).ravel()
        out.rows_word = "new samples"
    return out


# Why a zero-gain pick is in the selection, in the words every place that shows one uses.
ZERO_GAIN_WHY = ("nothing it covers was left uncovered when it was picked, so it added nothing "
                 "to the objective; it filled the budget in the evidence order (examples with "
                 "the highest mean utility as an example first, then those never scored)")

# What d measures, per distance (curator.scoring.utility): its name in a sentence and unit.
DISTANCE_WORDS = {
    "nll": ("loss (mean negative log-likelihood of the answer tokens)", "nats"),
    "prob-l2": ("error (how far the answer tokens' probabilities are from 1, prob-l2)", ""),
}


# The "How is this computed" text of the sample view (markdown).
HOW_COMPUTED = """
**The utility of a pair.** For a row *i* (a target, or a pool sample) and the example *j*,
the store keeps d(i), how far the model's answer is from *i*'s reference answer on its own,
and d(i | j), the same with *j* shown first in the prompt. The utility is

  UF(i, j) = d(i) − d(i | j)

(positive: showing *j* makes the answer better). With the `nll` distance d is the mean
negative log-likelihood of the answer tokens, in nats; with `prob-l2` it is
‖1 − p‖₂ / √T over the T answer tokens' probabilities p. The **loss drop** is
UF(i, j) / d(i).

**The kernel.** Greedy maximises a set function over S = max(UF, 0) divided by the
kernel's largest utility: facility location (instruction) Σ_i max_{j∈A} S[i, j] over the pool;
FLVMI (task) the same over the targets; FLCG (continual) Σ_i max(max_{j∈A} S[i, j] −
ν · max_{p∈P} S_P[i, p], 0) beyond what the previous selection P covers.

**The pick.** Its marginal gain is how much adding it raised the set function when it was
picked; the gains of all picks add up to the selection's objective, so gain / objective is
its share. A zero-gain pick added nothing: """ + ZERO_GAIN_WHY + "."


def percent(share: float) -> str:
    """A share in percent, with two significant digits below 10% (a tiny model's drops are
    0.004%, not "0.0%")."""
    value = share * 100
    if value == 0 or abs(value) >= 10:
        return f"{value:.0f}%" if abs(value) >= 10 else "0%"
    return f"{value:.2g}%"


def pick_label(rank: int) -> str:
    """A pick's number as people count: the first pick is #1 (ranks are stored from 0)."""
    return f"#{int(rank) + 1}"


def model_effect(pairs: list[dict[str, Any]], rows: list[str], rows_word: str,
                 texts: dict[str, str], distance: str) -> dict[str, Any]:
    """What showing the example does to the model's answers, from its stored pairs with the
    kernel's rows: per helped row the drop d(i) - d(i | j) and the drop as a share of d(i);
    the sentence a user can repeat."""
    wanted = set(rows)
    scored = [p for p in pairs if p["target_id"] in wanted]
    helped = [p for p in scored if p["utility"] > 0]
    hurt = sum(1 for p in scored if p["utility"] < 0)
    loss, unit = DISTANCE_WORDS.get(distance, ("distance from the reference answer", ""))
    short = loss.split(" (")[0]
    word = rows_word if len(helped) != 1 else rows_word.removesuffix("s")
    table = []
    for p in helped:
        share = p["utility"] / p["d_target"] if p["d_target"] else None
        table.append({"sample_id": p["target_id"], "drop": p["utility"],
                      "drop %": share, "before": p["d_target"], "with it": p["d_given"]})
    if not scored:
        sentence = (f"No stored pair measures this example against the {rows_word}: there is "
                    "nothing to say about the model's answers.")
    elif not helped:
        sentence = (f"Showing this example does not lower the model's {short} on any of the "
                    f"{plural_words(len(scored), rows_word)} it was scored with.")
    else:
        shares = [r["drop %"] for r in table if r["drop %"] is not None]
        mean_drop = sum(r["drop"] for r in table) / len(table)
        best = max(table, key=lambda r: (r["drop %"] or 0.0, r["drop"]))
        amount = (f"{percent(sum(shares) / len(shares))} on average" if shares
                  else f"{mean_drop:.3g}{' ' + unit if unit else ''} on average")
        best_text = _quote(texts.get(best["sample_id"], best["sample_id"]))
        best_amount = percent(best["drop %"]) if best["drop %"] is not None else \
            f"{best['drop']:.3g}"
        sentence = (f"Showing this example makes the model's {short} on the answers of "
                    f"{len(helped):,} {word} drop by {amount} (best: {best_text}, "
                    f"{best_amount})")
        if unit:
            sentence += f"; {mean_drop:.3g} {unit} per answer on average"
        sentence += "."
    if hurt:
        sentence += (f" It raises the {short} on {plural_words(hurt, rows_word)} "
                     f"({'it counts' if hurt == 1 else 'they count'} as 0 in the kernel).")
    return {"sentence": sentence, "rows": table, "n_scored": len(scored),
            "n_helped": len(helped), "n_hurt": hurt, "loss": loss, "unit": unit}


def plural_words(n: int, words: str) -> str:
    return f"{n:,} {words if n != 1 else words.removesuffix('s')}"


def _quote(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return "'" + (text if len(text) <= n else text[: n - 1] + "…") + "'"


def objective_share(gain: float | None, objective: float | None) -> float | None:
    """A pick's marginal gain as a share of the selection's objective (greedy's gains add
    up to the objective)."""
    if gain is None or not objective or objective <= 0:
        return None
    return gain / objective


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def explain(store: Store, kernels: SelectionKernels, sample_id: str,
            member: dict[str, Any] | None, limit: int = 10) -> dict[str, Any]:
    """The rows the sample covers (best first, ``limit`` of them), the pool samples that
    cover it best, and a one-line summary in words."""
    col = {s: j for j, s in enumerate(kernels.pool)}.get(sample_id)
    covers: list[dict[str, Any]] = []
    n_cover, best = 0, 0.0
    if col is not None and kernels.cover is not None:
        column = np.asarray(kernels.cover[:, col].todense()).ravel().astype(np.float64)
        value = column.copy()
        if kernels.cap is not None:
            value = np.minimum(value, kernels.cap)
        if kernels.already is not None:
            value = np.maximum(value - kernels.already, 0.0)
        hit = np.flatnonzero(value > 0)
        n_cover = len(hit)
        best = float(value[hit].max()) if n_cover else 0.0
        order = hit[np.lexsort((hit, -value[hit]))][:limit]
        texts = get_samples(store, [kernels.rows[i] for i in order])
        for i in order:
            rid = kernels.rows[i]
            row = {"dataset": kernels.rows_dataset, "sample_id": rid,
                   "coverage": float(value[i]), "similarity": float(column[i])}
            if kernels.already is not None:
                row["covered before"] = float(kernels.already[i])
            row["text"] = _text(texts.get(rid), itself=rid == sample_id)
            covers.append(row)
    helped: list[dict[str, Any]] = []
    if col is not None and kernels.helped is not None:
        row_vals = np.asarray(kernels.helped[col, :].todense()).ravel().astype(np.float64)
        hit = np.flatnonzero(row_vals > 0)
        hit = hit[hit != col]
        order = hit[np.lexsort((hit, -row_vals[hit]))][:limit]
        texts = get_samples(store, [kernels.pool[j] for j in order])
        helped = [{"dataset": kernels.pool_dataset, "sample_id": kernels.pool[j],
                   "similarity": float(row_vals[j]), "text": _text(texts.get(kernels.pool[j]))}
                  for j in order]
    return {"covers": covers, "helped": helped, "n_cover": n_cover, "best": best,
            "summary": summary(kernels, n_cover, best, member, col is not None)}


def explain_in_model_terms(store: Store, selection_id: str, kernels: SelectionKernels,
                           sample_id: str, member: dict[str, Any] | None,
                           limit: int = 10) -> dict[str, Any]:
    """``explain`` plus what showing the sample does to the model's answers (its stored
    pairs with the kernel's rows, ``model_effect``), the loss drop beside each row it
    covers, and no coverage column where it only repeats the kernel value."""
    from curator.store.browse_scores import example_utilities

    sel = get_selection(store, selection_id)
    out = explain(store, kernels, sample_id, member, limit)
    pairs = example_utilities(store, sel.model, (sel.config or {}).get("utility_config"),
                              sample_id)
    best = max((p for p in pairs if p["utility"] > 0),
               key=lambda p: p["utility"] / p["d_target"] if p["d_target"] else 0.0,
               default=None)
    texts = {}
    if best is not None:
        texts = {i: _text(s) for i, s in get_samples(store, [best["target_id"]]).items()}
    effect = model_effect(pairs, kernels.rows, kernels.rows_word, texts,
                          (sel.config or {}).get("distance", "prob-l2"))
    drops = {r["sample_id"]: r for r in effect["rows"]}
    same = kernels.cap is None and kernels.already is None
    for row in out["covers"]:
        d = drops.get(row["sample_id"])
        share = d["drop %"] if d else None
        extra = {"drop %": None if share is None else share * 100,
                 "drop": d["drop"] if d else None}
        if same:
            row.pop("coverage", None)
        text = row.pop("text")
        row.update(extra)
        row["text"] = text
    out["effect"] = effect
    return out


def summary(kernels: SelectionKernels, n_cover: int, best: float,
            member: dict[str, Any] | None, in_pool: bool) -> str:
    if not in_pool:
        return "not in this selection's pool"
    word = kernels.rows_word if n_cover != 1 else kernels.rows_word.removesuffix("s")
    what = (f"covers {n_cover:,} {word}, best {best:.2f}" if n_cover
            else f"covers none of the {kernels.rows_word}")
    if kernels.already is not None:
        what += " beyond what the previous data covers"
    if member is None:
        return f"{what}; not picked"
    gain = member.get("gain")
    pick = f"{_ordinal(int(member['rank']) + 1)} pick"
    if gain is None:
        return f"{what}; {pick}"
    if gain == 0:
        return f"{what}; {pick}, gain 0 (a zero-gain pick: {ZERO_GAIN_WHY})"
    return f"{what}; {pick}, gain {gain:.3g}"


def _text(sample: Any, itself: bool = False) -> str:
    if sample is None:
        return ""
    text = f"{sample.prompt} → {sample.response}".replace("\n", " ")
    text = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
    return f"(this sample) {text}" if itself else text
