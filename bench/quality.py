"""Quality benchmark: do curated subsets train better than random subsets of the same size?

    .venv/bin/python bench/quality.py --plan      # the sizing estimate below, then exit
    .venv/bin/python bench/quality.py --quick     # one task, three methods: under 20 min
    .venv/bin/python bench/quality.py             # both tasks, six methods: under 90 min
    .venv/bin/python bench/quality.py --methods all          # + LESS-style and GAST
    .venv/bin/python bench/quality.py --model tiny           # smoke: tiny random model, tiny sizes

Design (paired). One pool from ../shared/data (``bench/quality_data.py``: t0 families,
self-instruct, GSM8K train, a few rows of each target task, 18% corrupted responses,
near-duplicates) and two target tasks:
- ``t0``: a held-out T0 family (default sciq) scored by response loss; its evaluation set
  takes each held-out item under every template, and the bootstrap resamples items;
- ``em``: a BBH task (default sports_understanding; or GSM8K test) scored by response
  loss and by exact match (greedy answer, ``curator.training.evaluate``).
For each task, each method selects 30% of the pool in the task stage toward that task's
target set Q (20 rows). Each selection is fine-tuned from the same base model with
training seeds 0..S-1: the same steps, batch size, lr and seed, hence the same data order
(seed s draws the same permutation of batch positions); random subset s is drawn with
seed s and trained with seed s. Every run is evaluated on the same rows, so run s of a
method pairs with random run s row by row. For each method the table gives the mean paired
difference to random with a 95% bootstrap interval over training seeds and evaluation rows
(``bench/quality_stats.py``); a method counts as better when the interval is above zero.
Random and full data do not depend on the target, so each of their runs serves both tasks.
Every selection also gets its cheap signals: corrupted-row share, target-family share and
zero-gain share (picks made when the utilities had nothing left to add), each against the
pool's base rate. The instruction stage (existing version) and the continual stage (new
rows given the same method's instruction selection) are selected and signalled, not
trained; the continual stage adds the share of rows from families new in v2.

Resumable: the store keeps selections (a rerun reuses identical ones); every fine-tuning
run is cached in ``<workdir>/runs/<key>.json``, keyed by what it depends on (the subset's
members in order, layer subsets, mask, steps, lr, batch, seed, model) and holding per-row
results per evaluation set; a rerun skips what is there. Random and full data, whose
members are the same for both tasks, are trained once and evaluated on both.

Sizing (2 CPU cores, default model SmolLM2-135M; facts measured before, given to this
script as constants: forward ~650 tokens/s; utility scoring ~4 pairs/s on 150-token rows;
a 30-step fine-tune at batch 8 ~4 minutes, i.e. ~8 s a step; DualSFT, LESS-style and
GAST selections took 520, 458 and 181 s on 200 pool rows in bench/results/quality.md,
about 7, 6 and 3 fwd+bwd passes of 200 x 79 tokens x 3 / 650 = 73 s). Mean rows, in
SmolLM2 tokens with its chat template (measured on this data): pool 79, sciq eval 68,
sports_understanding 51. Default: pool 150, 3 seeds, 10 steps, 2 tasks, methods random,
full, DELIFT, embedding FL, RDS+, DualSFT; instruction and continual stages selected too:
- fine-tuning: 4 target-aware methods x 2 tasks x 3 seeds + (random + full) x 3 seeds =
  30 runs x 10 steps x 8 s = 40.0 min;
- evaluation: t0 200 rows x 68 tokens / 650 = 21 s; em loss 200 x 51 / 650 = 16 s, and
  exact match: prefill 16 s + 8 new tokens x 13 batches x 0.05 s = 5 s, so 37 s;
  12 runs x 21 s + 12 x 37 s + 7 (random, full, base) x 58 s = 1092 s = 18.2 min;
- DualSFT selection: 7 passes x 150 x 79 x 3 / 650 = 383 s per task, 12.8 min;
- DELIFT task stage: up to 3 x 20 targets x k=8 pairs (the kNN pairs plus up to twice as
  many scored on demand, assumed) / 4 pairs/s = 120 s per task, 4.0 min;
- instruction (90 existing rows x 8 pairs) and continual (60 new rows x 8 x 2) DELIFT
  utilities: 1680 pairs / 4 = 7.0 min;
- embeddings, RDS+, loads: (150 + 40) x 79 / 650 + 30 s, and a fresh model per run
  (31 x ~3 s, assumed): 2.5 min.
Total ~84 min. ``--methods all`` adds LESS-style and GAST: 12 runs x 80 s = 16 min,
their evaluation 5.8 min, 9 passes x 2 tasks x 55 s = 16.4 min and loads: ~123 min in
all, more than 90, so they are not in the default.
Why these sizes: evaluation (>= 200 rows per task, every run) and the gradient passes
(linear in the pool) are what the budget cannot shrink, so the pool is 150 rows, not 200
(DualSFT alone would take 17 min at 200), and each run has 10 steps (80 rows, about two
epochs of a 45-row subset). Why a BBH task and not GSM8K for exact match: a 135M model
scores near 0 on GSM8K, and its ~150-token answers would cost ~150 decoding steps x 13
batches per run (~100 s more per run); ``--em-task gsm8k`` runs it anyway. Changes that
add cost (a warm-up for the gradient methods, more pairs scored on demand) move these
numbers: ``--plan`` does not know them.
``--quick``: task t0 only, random, DELIFT, RDS+, 8 steps, no other stage: 9 runs x 64 s
= 9.6 min + 10 evaluations x 21 s = 3.5 min + DELIFT 2 min + 1.3 min = ~16 min (results
in ``bench/results/quality_quick.md``).
``--plan`` prints this estimate for the options given (``estimate_seconds``).

Library entry points (the only calls into curator; re-point them here when the library
moves): ``select_one`` (curator.stages.select_stage, resolve_pools; config.StageSpec,
ScoringOptions), ``training_set`` (export.export_selection, load_export), ``fine_tune``
(train.train), ``evaluate_task`` (evaluate.row_losses, exact_match), ``prepare``
(ingest.ingest, store.Store, store.datasets.load_samples), ``stored_gains`` and
``subset_digest`` (store.selection_rows), ``scoring_model`` / ``training_model`` (models,
testing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality_data import DataConfig, QualityData, Row, build, em_family  # noqa: E402
from quality_stats import PairedDiff, compare  # noqa: E402

from curator.vocabulary import DEFAULT_HARM, HARM_RULES  # noqa: E402

LABEL = {"delift": "DELIFT", "embedding": "embedding FL", "rds": "RDS+", "dualsft": "DualSFT",
         "gast": "GAST", "less": "LESS-style top-k", "random": "random", "full": "full data",
         "base": "base model (no fine-tuning)"}
ALL_METHODS = ("random", "full", "delift", "embedding", "rds", "dualsft", "less", "gast")
DEFAULT_METHODS = ("random", "full", "delift", "embedding", "rds", "dualsft")
QUICK_METHODS = ("random", "delift", "rds")
SHARED = ("random", "full")          # members do not depend on the target: one run, both tasks
STAGE_METHODS = ("delift", "embedding", "random")   # instruction and continual stages
FUNCTION = {"instruction": "FL", "continual": "FLCG", "task": "FLVMI"}
# answer pattern and new tokens per exact-match task (yes/no tasks: the first yes or no)
EM_SETTINGS = {"gsm8k": (r"#### (.*)", 256),
               "sports_understanding": (r"(?i)\b(yes|no)\b", 8),
               "navigate": (r"(?i)\b(yes|no)\b", 8), "web_of_lies": (r"(?i)\b(yes|no)\b", 8),
               "boolean_expressions": (r"(?i)\b(true|false)\b", 8)}
EM_DEFAULT = (None, 16)
# The loss this benchmark's stored evaluations and bench/RESULTS.md measure: the whole
# response, end-of-turn tokens included ("answer", curator eval's default, would change what
# a cached evaluation under the same eval_id means)
LOSS_TOKENS = "response"

# ---------------------------------------------------------------- facts and sizing

FORWARD_TOKENS_S = 650.0     # default model, forward
PAIRS_S = 4.0                # DELIFT utility pairs per second (150-token T0 rows)
STEP_S = 8.0                 # one fine-tuning step at batch 8 (30 steps ~ 4 min)
DECODE_STEP_S = 0.05         # one cached decoding step of a 16-row batch
GRADIENT_PASSES = {"dualsft": 7, "less": 6, "gast": 3}   # fwd+bwd passes over the pool
MEAN_TOKENS = {"pool": 79, "t0": 68, "em": 51}           # measured, SmolLM2 chat template
ON_DEMAND_FACTOR = 3         # DELIFT pairs: the kNN pairs and up to twice as many more
MODEL_LOAD_S = 3.0           # a fresh fp32 copy of the model per run (assumed, not measured)


def estimate_seconds(args: argparse.Namespace) -> dict[str, float]:
    """The docstring's arithmetic for the given options (default-model facts)."""
    n, seeds, tasks = args.pool_size, args.seeds, args.tasks
    aware = [m for m in args.methods if m not in SHARED]
    shared = [m for m in args.methods if m in SHARED]
    em_tokens = EM_SETTINGS.get(em_family(args.em_task) or "", EM_DEFAULT)[1]
    per_eval = {"t0": args.eval_size * MEAN_TOKENS["t0"] / FORWARD_TOKENS_S,
                "em": 2 * args.em_eval_size * MEAN_TOKENS["em"] / FORWARD_TOKENS_S
                + em_tokens * math.ceil(args.em_eval_size / 16) * DECODE_STEP_S}
    both = sum(per_eval[t] for t in tasks)
    out = {
        "fine-tuning": 0.0 if args.no_train else (len(aware) * len(tasks) + len(shared)) * seeds * args.steps * STEP_S
        * args.batch_size / 8,
        "evaluation": 0.0 if args.no_train else len(aware) * seeds
        * sum(per_eval[t] for t in tasks) + (len(shared) * seeds + 1) * both,
        "gradient selections": len(tasks) * sum(GRADIENT_PASSES.get(m, 0) for m in aware)
        * n * MEAN_TOKENS["pool"] * 3 / FORWARD_TOKENS_S,
        "DELIFT task stage": len(tasks) * ON_DEMAND_FACTOR * args.target_size * args.k
        / PAIRS_S if "delift" in args.methods else 0.0,
        "embeddings and loads": (n + len(tasks) * args.target_size) * MEAN_TOKENS["pool"]
        / FORWARD_TOKENS_S + 30 + ((len(aware) * len(tasks) + len(shared)) * seeds + 1)
        * MODEL_LOAD_S * (not args.no_train),
    }
    if {"instruction", "continual"} & set(args.stages) and "delift" in args.methods:
        pairs = 0.6 * n * args.k * ("instruction" in args.stages) \
            + 0.4 * n * args.k * 2 * ("continual" in args.stages)
        out["instruction and continual DELIFT"] = pairs / PAIRS_S
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------- options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="task t0 only, methods random, DELIFT, RDS+, 8 steps (~16 min)")
    p.add_argument("--model", choices=["default", "tiny"], default="default",
                   help="tiny: a tiny random model and tiny sizes, to check the script")
    p.add_argument("--plan", action="store_true", help="print the time estimate and exit")
    p.add_argument("--no-train", action="store_true",
                   help="selections and their cheap signals only (no fine-tuning)")
    p.add_argument("--tasks", nargs="+", choices=["t0", "em"], default=None)
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"of {' '.join(ALL_METHODS)}, or 'all' (default: "
                        f"{' '.join(DEFAULT_METHODS)})")
    p.add_argument("--stages", nargs="+", choices=["task", "instruction", "continual"],
                   default=None, help="default: all three (--quick: task)")
    p.add_argument("--target-family", default="sciq", help="the t0 task's family")
    p.add_argument("--em-task", default="bbh:sports_understanding",
                   help="the exact-match task: bbh:<task> or gsm8k")
    p.add_argument("--pool-size", type=int, default=None, help="pool rows (150)")
    p.add_argument("--eval-size", type=int, default=None, help="t0 eval rows (200)")
    p.add_argument("--em-eval-size", type=int, default=None, help="em eval rows (200)")
    p.add_argument("--target-size", type=int, default=None, help="target set Q per task (20)")
    p.add_argument("--corrupt-share", type=float, default=0.18)
    p.add_argument("--budget", default="30%")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per method (3)")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run (10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--k", type=int, default=None, help="DELIFT neighbours per sample (8)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="drop rows whose prompt + response exceed this many tokens (128)")
    p.add_argument("--self-coverage", choices=["best", "one"], default="best")
    p.add_argument("--harm", choices=list(HARM_RULES), default=DEFAULT_HARM,
                   help="DELIFT's harm rule (an ablation: 'mean' against the default)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    p.add_argument("--workdir", type=Path, default=None,
                   help="store, data and cached runs (default /tmp/curator-quality[-quick|-tiny])")
    p.add_argument("--out", type=Path, default=None,
                   help="results table (default bench/results/quality.md; tiny: in workdir)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--note", default="", help="a line for the results (e.g. machine load)")
    args = p.parse_args(argv)
    tiny = args.model == "tiny"
    size = {"pool_size": 40, "eval_size": 10, "em_eval_size": 10, "target_size": 5,
            "seeds": 2, "steps": 2, "k": 4, "max_tokens": 192} if tiny else \
        {"pool_size": 150, "eval_size": 200, "em_eval_size": 200, "target_size": 20,
         "seeds": 3, "steps": 8 if args.quick else 10, "k": 8, "max_tokens": 128}
    for key, value in size.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.methods is None:
        args.methods = list(QUICK_METHODS if args.quick else DEFAULT_METHODS)
    elif args.methods == ["all"]:
        args.methods = list(ALL_METHODS)
    unknown = set(args.methods) - set(ALL_METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; known: {' '.join(ALL_METHODS)}")
    if "random" not in args.methods:
        args.methods.insert(0, "random")     # the baseline every comparison pairs with
    args.methods = [m for m in ALL_METHODS if m in args.methods]
    args.tasks = args.tasks or (["t0"] if args.quick else ["t0", "em"])
    args.stages = args.stages or (["task"] if args.quick else ["task", "instruction",
                                                                 "continual"])
    em_family(args.em_task)  # a bad name fails here, before any work
    suffix = "-tiny" if tiny else "-quick" if args.quick else ""
    args.workdir = args.workdir or Path("/tmp/curator-quality" + suffix)
    args.out = args.out or (args.workdir / "quality.md" if tiny else ROOT / "bench" / "results"
                            / ("quality_quick.md" if args.quick else "quality_paired.md"))
    return args


# ---------------------------------------------------------------- library entry points


def scoring_model(args: argparse.Namespace):
    if args.model == "tiny":
        from curator.testing import tiny_loaded_model

        return tiny_loaded_model("llama", seed=0)
    from curator.models import load_model

    return load_model(None)  # bf16 where the CPU has it: scoring only reads the model


def training_model(args: argparse.Namespace):
    """A fresh copy for every run, fp32 (training in bf16 on CPU loses small updates)."""
    if args.model == "tiny":
        from curator.testing import tiny_loaded_model

        return tiny_loaded_model("llama", seed=0)
    from curator.models import load_model

    return load_model(None, dtype="fp32")


def prepare(args: argparse.Namespace, tokenizer: Any):
    """Build the data, write it, and (re)ingest it when it changed. Returns (data, store):
    dataset "pool" (v1 existing, v2 existing + new), "target" (t0 task's Q), "em_target"."""
    from curator.ingestion.ingest import ingest
    from curator.store import Store
    from curator.store.datasets import load_samples

    def fits(row: Row) -> bool:
        return len(tokenizer(row.prompt + "\n" + row.response,
                             add_special_tokens=False)["input_ids"]) <= args.max_tokens

    cfg = DataConfig(pool_size=args.pool_size, target_family=args.target_family,
                     target_size=args.target_size, eval_size=args.eval_size,
                     corrupt_share=args.corrupt_share, eval_all_templates=True,
                     em_task=args.em_task if "em" in args.tasks else None,
                     em_target_size=args.target_size, em_eval_size=args.em_eval_size)
    data = build(cfg, fits=fits)
    paths = data.write(args.workdir / "data")
    names = ["existing", "new", "target"] + (["em_target"] if data.em_target else [])
    digest = hashlib.sha256(b"".join(paths[n].read_bytes() for n in names)).hexdigest()[:16]
    store_path = args.workdir / "store"
    stamp = args.workdir / "data.sha"
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(store_path, ignore_errors=True)
        store = Store(store_path)
        store.init()
        ingest(store, str(paths["existing"]), "pool")
        ingest(store, str(paths["new"]), "pool", append=True)
        ingest(store, str(paths["target"]), "target")
        if data.em_target:
            ingest(store, str(paths["em_target"]), "em_target")
        stamp.write_text(digest)
    store = Store(store_path)
    stored = {s.sample_id for s in load_samples(store, "pool", 2)}
    if stored != set(data.labels()):
        raise RuntimeError(f"store pool ({len(stored)}) and labels ({len(data.labels())}) "
                           "disagree")
    return data, store


@dataclasses.dataclass
class Selected:
    stage: str
    task: str                 # t0 | em | "" (instruction, continual)
    method: str
    seed: int                 # random: the subset's seed; others 0
    selection_id: str
    sample_ids: list[str]
    pool_ids: list[str]
    config: dict[str, Any]
    seconds: float
    reused: bool
    signals: dict[str, float] = dataclasses.field(default_factory=dict)


def select_one(args, store, lm, stage: str, method: str, seed: int, target: str | None,
               previous: str | None = None) -> tuple[Any, list[str]]:
    """One stored selection (reused when identical); returns (outcome, pool ids)."""
    from curator.config import ScoringOptions, StageSpec
    from curator.stages import resolve_pools, select_stage

    spec = StageSpec(stage=stage, method=method, budget=args.budget, seed=seed,
                     self_coverage=args.self_coverage, target=target,
                     harm=args.harm if method == "delift" else DEFAULT_HARM)
    if stage == "instruction":
        spec.version = 1
    elif stage == "continual":
        spec.parent, spec.version, spec.pool = previous, 2, "new"
    else:
        spec.version = 2
    options = ScoringOptions(k=args.k, batch_size=8, max_length=512)
    outcome = select_stage(store, "pool", spec, lm=lm, options=options,
                           previous_selection=previous)
    pool_ids = [s.sample_id for s in resolve_pools(store, "pool", spec, previous).pool]
    return outcome, pool_ids


def stored_gains(store, selection_id: str) -> list[float]:
    """Marginal gains of a selection's members as stored (rank order)."""
    from curator.store.selection_rows import selection_members

    return [float(r["gain"] or 0.0) for r in selection_members(store, selection_id)]


def subset_digest(store, selection_id: str) -> str:
    """What a fine-tuning run depends on in a selection: its members in order, its layer
    subsets and its mask file."""
    from curator.store.selection_rows import get_mask_record, selection_layers, selection_sample_ids

    mask = get_mask_record(store, selection_id)
    blob = json.dumps({"members": selection_sample_ids(store, selection_id),
                       "layers": selection_layers(store, selection_id),
                       "mask": mask and mask.get("sha256")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def training_set(store, selection_id: str, folder: Path):
    """The selection as training reads it: samples, mask, layer subsets (via an export)."""
    from curator.outputs.subsets import export_selection, load_export

    export_selection(store, selection_id, folder, force=True)
    return load_export(folder)


def fine_tune(args, lm, exported, seed: int):
    from curator.training.finetune import train

    return train(lm, None, exported.samples, mask=exported.mask,
                 layer_subsets=exported.layers, steps=args.steps, lr=args.lr,
                 batch_size=args.batch_size, seed=seed, max_length=512)


# ---------------------------------------------------------------- tasks


@dataclasses.dataclass
class Task:
    name: str                 # t0 | em
    family: str
    target_dataset: str
    rows: list[Row]           # evaluation rows
    exact_match: bool
    answer_pattern: str | None = None
    max_new_tokens: int = 0

    @property
    def clusters(self) -> np.ndarray:
        """Bootstrap units: an item (one question under several templates) or a row."""
        _, labels = np.unique([r.item for r in self.rows], return_inverse=True)
        return labels

    @property
    def eval_id(self) -> str:
        blob = json.dumps([[r.prompt, r.response] for r in self.rows]
                          + [self.exact_match, self.answer_pattern, self.max_new_tokens])
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def make_tasks(args, data: QualityData) -> list[Task]:
    tasks = []
    if "t0" in args.tasks:
        tasks.append(Task("t0", args.target_family, "target", data.eval, False))
    if "em" in args.tasks:
        fam = em_family(args.em_task)
        pattern, new_tokens = EM_SETTINGS.get(fam, EM_DEFAULT)
        tasks.append(Task("em", fam, "em_target", data.em_eval, True, pattern, new_tokens))
    return tasks


def evaluate_task(lm, task: Task) -> dict[str, Any]:
    """Per-row response losses (and exact-match hits) of one model on one task."""
    from curator.records import Sample
    from curator.training.evaluate import exact_match, row_losses

    samples = [Sample.from_pair(r.prompt, r.response) for r in task.rows]
    t = time.monotonic()
    out: dict[str, Any] = {"loss": [None if math.isnan(x) else float(x) for x in
                                    row_losses(lm, samples, batch_size=16, max_length=512,
                                               tokens=LOSS_TOKENS)],
                           "loss_tokens": LOSS_TOKENS}
    if task.exact_match:
        em = exact_match(lm, samples, max_new_tokens=task.max_new_tokens,
                         answer_pattern=task.answer_pattern, batch_size=16)
        out["hits"] = [int(h) for h in em.hits]
        out["examples"] = [[g, r] for g, r in zip(em.generations[:3], em.references[:3],
                                                  strict=True)]
    out["seconds"] = time.monotonic() - t
    return out


# ---------------------------------------------------------------- signals


def signals(ids: list[str], pool_ids: list[str], labels: dict[str, Row], family: str | None,
            new_families: set[str], zero_gain: int | None) -> dict[str, float]:
    """Cheap signals of one selection against its stage's pool (shares and base rates)."""
    sel = [labels[i] for i in ids]
    pool = [labels[i] for i in pool_ids]

    def share(rows: list[Row], pred) -> float:
        return sum(map(pred, rows)) / max(1, len(rows))

    def corrupt(r: Row) -> bool:
        return r.corruption is not None

    def fam(r: Row) -> bool:
        return r.family == family

    def new(r: Row) -> bool:
        return r.family in new_families

    out = {"n": len(sel), "n_pool": len(pool),
           "corrupt_share": share(sel, corrupt), "corrupt_base": share(pool, corrupt),
           "target_share": share(sel, fam), "target_base": share(pool, fam),
           "new_family_share": share(sel, new), "new_family_base": share(pool, new),
           "zero_gain": float("nan") if zero_gain is None else zero_gain,
           "zero_gain_share": float("nan") if zero_gain is None else zero_gain / max(1, len(sel))}
    for k in ("corrupt", "target", "new_family"):
        base = out[f"{k}_base"]
        out[f"{k}_ratio"] = out[f"{k}_share"] / base if base else float("nan")
    return out


def zero_gain_picks(store, outcome, method: str) -> int | None:
    """Picks made at zero utility gain: for set-function methods, members whose stored
    gain is 0 (a refill records its picks at 0) or the refill count the selection records,
    whichever is larger; None for methods without gains (random, full, RDS+, gradients)."""
    if method not in ("delift", "embedding"):
        return None
    gains = stored_gains(store, outcome.selection_id)
    at_zero = sum(g <= 1e-12 for g in gains)
    return max(at_zero, int(outcome.record.config.get("zero_gain_refilled", 0) or 0))


def run_selection(args, store, lm, data: QualityData, stage: str, task: Task | None,
                  method: str, seed: int, previous: str | None = None) -> Selected:
    outcome, pool_ids = select_one(args, store, lm, stage, method, seed,
                                   task.target_dataset if task else None, previous)
    sel = Selected(stage, task.name if task else "", method, seed, outcome.selection_id,
                   list(outcome.sample_ids), pool_ids, dict(outcome.record.config),
                   float(outcome.record.seconds or 0.0), outcome.reused)
    new_families = {r.family for r in data.new} - {r.family for r in data.existing}
    sel.signals = signals(sel.sample_ids, pool_ids, data.labels(),
                          task.family if task else None, new_families,
                          zero_gain_picks(store, outcome, method))
    print(f"[select] {stage:11s} {task.name if task else '':3s} {method:9s} seed {seed}: "
          f"{len(sel.sample_ids)}/{len(pool_ids)} in {sel.seconds:.1f}s"
          f"{' (reused)' if sel.reused else ''}", flush=True)
    return sel


# ---------------------------------------------------------------- runs (cached)


def run_key(args, store, selection: Selected | None, seed: int) -> dict[str, Any]:
    return {"subset": None if selection is None else subset_digest(store, selection.selection_id),
            "steps": args.steps, "lr": args.lr, "batch": args.batch_size, "seed": seed,
            "model": args.model, "max_length": 512}


def ensure_run(args, store, selection: Selected | None, seed: int, tasks: list[Task],
               counters: dict[str, int]) -> dict[str, Any]:
    """The run of ``selection`` (None: the base model) with training seed ``seed``,
    evaluated on ``tasks``; read from the cache when it holds every evaluation asked for,
    else trained (the model is not kept, so a missing evaluation retrains) and saved."""
    key = run_key(args, store, selection, seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = args.workdir / "runs" / f"{digest}.json"
    saved = json.loads(path.read_text()) if path.exists() else {"key": key, "evals": {}}
    missing = [t for t in tasks if t.eval_id not in saved["evals"]]
    if not missing:
        counters["cached"] += 1
        return saved
    label = "base" if selection is None else f"{selection.task}/{selection.method}/s{seed}"
    started = time.monotonic()
    lm = training_model(args)
    if selection is not None:
        exported = training_set(store, selection.selection_id,
                                args.workdir / "exports" / digest)
        t = time.monotonic()
        tr = fine_tune(args, lm, exported, seed)
        saved["train"] = {"seconds": time.monotonic() - t, "n_train": tr.n_train,
                          "first_loss": tr.losses[0],
                          "last_loss": float(np.mean(tr.losses[-3:])),
                          "masked": exported.mask is not None,
                          "layered": exported.layers is not None}
    for task in missing:
        saved["evals"][task.eval_id] = evaluate_task(lm, task)
    saved["label"] = label
    saved["seconds"] = time.monotonic() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved))
    tmp.replace(path)  # a killed run leaves no half file
    counters["trained"] += 1
    summary = ", ".join(f"{t.name} loss {np.nanmean(_floats(saved['evals'][t.eval_id]['loss'])):.4f}"
                        for t in missing)
    print(f"[train] {label}: {summary} ({saved['seconds']:.0f}s)", flush=True)
    return saved


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


# ---------------------------------------------------------------- statistics


@dataclasses.dataclass
class MethodResult:
    method: str
    n_train: str
    loss: np.ndarray                 # (seeds, rows)
    hits: np.ndarray | None
    vs_random: PairedDiff | None = None
    em_vs_random: PairedDiff | None = None
    vs_rds: PairedDiff | None = None
    masked: bool = False
    layered: bool = False


def task_results(args, task: Task, runs: dict[tuple[str, str, int], dict[str, Any]]
                 ) -> tuple[dict[str, MethodResult], dict[str, Any] | None]:
    """Per-method (seeds x rows) arrays for one task and the paired comparisons."""
    out: dict[str, MethodResult] = {}
    for method in args.methods:
        seeds = [runs.get((task.name, method, s)) for s in range(args.seeds)]
        if any(r is None or task.eval_id not in r["evals"] for r in seeds):
            continue
        evals = [r["evals"][task.eval_id] for r in seeds]
        loss = np.stack([_floats(e["loss"]) for e in evals])
        hits = np.stack([np.asarray(e["hits"], float) for e in evals]) \
            if task.exact_match else None
        n_train = "/".join(sorted({str(r["train"]["n_train"]) for r in seeds}))
        out[method] = MethodResult(method, n_train, loss, hits,
                                   masked=seeds[0]["train"]["masked"],
                                   layered=seeds[0]["train"]["layered"])
    base = runs.get((task.name, "base", 0))
    rnd = out.get("random")
    for method, res in out.items():
        if rnd is not None and method != "random":
            res.vs_random = compare(res.loss, rnd.loss, True, task.clusters, args.boot)
            if res.hits is not None:
                res.em_vs_random = compare(res.hits, rnd.hits, False, task.clusters,
                                           args.boot)
        if "rds" in out and method not in ("rds", "random"):
            res.vs_rds = compare(res.loss, out["rds"].loss, True, task.clusters, args.boot)
    return out, (base["evals"][task.eval_id] if base else None)


# ---------------------------------------------------------------- report


def _ci(d: PairedDiff | None, digits: int = 4) -> str:
    if d is None:
        return "-"
    return f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _verdict(d: PairedDiff | None) -> str:
    if d is None:
        return "-"
    return "**better**" if d.above_zero else "worse" if d.below_zero else "no difference"


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.1%}"


def _ratio(x: float) -> str:
    return "-" if x != x else f"{x:.2f}x"


def signal_rows(selections: list[Selected]) -> list[str]:
    lines = ["| stage | task | method | picked / pool | corrupted (x base) | target family "
             "(x base) | new families (x base) | zero-gain picks | select s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in selections:
        g = s.signals
        name = LABEL[s.method] + (f" seed {s.seed}" if s.method == "random" else "")
        if s.method in ("delift", "embedding"):
            name += f" [{FUNCTION[s.stage]}]"
        zero = "-" if g["zero_gain"] != g["zero_gain"] else \
            f"{int(g['zero_gain'])} ({g['zero_gain_share']:.1%})"
        fam = "-" if s.stage != "task" else \
            f"{_pct(g['target_share'])} ({_ratio(g['target_ratio'])})"
        new = "-" if s.stage != "continual" else \
            f"{_pct(g['new_family_share'])} ({_ratio(g['new_family_ratio'])})"
        lines.append(f"| {s.stage} | {s.task or '-'} | {name} | {g['n']}/{g['n_pool']} | "
                     f"{_pct(g['corrupt_share'])} ({_ratio(g['corrupt_ratio'])}) | {fam} | "
                     f"{new} | {zero} | {s.seconds:.1f} |")
    return lines


def outcome_rows(task: Task, results: dict[str, MethodResult], base: dict | None
                 ) -> list[str]:
    em = task.exact_match
    head = "| method | rows trained | loss (mean ± sd over seeds) | loss: random - method " \
           "[95% CI] | vs random | vs RDS+: RDS+ - method [95% CI] |"
    sep = "|---|---:|---:|---:|---|---:|"
    if em:
        head += " exact match | EM: method - random [95% CI] |"
        sep += "---:|---:|"
    lines = [head, sep]
    if base:
        cells = f"| {LABEL['base']} | 0 | {np.nanmean(_floats(base['loss'])):.4f} | - | - | - |"
        if em:
            cells += f" {np.mean(base['hits']):.3f} | - |"
        lines.append(cells)
    for method, r in results.items():
        per_seed = np.nanmean(r.loss, axis=1)
        sd = per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0
        name = LABEL[method] + (" (masked)" if r.masked else "") + \
            (" (layer subsets)" if r.layered else "")
        cells = (f"| {name} | {r.n_train} | {per_seed.mean():.4f} ± {sd:.4f} | "
                 f"{_ci(r.vs_random)} | {_verdict(r.vs_random)} | {_ci(r.vs_rds)} |")
        if em:
            per_seed_em = r.hits.mean(axis=1)
            cells += (f" {per_seed_em.mean():.3f} ± "
                      f"{per_seed_em.std(ddof=1) if len(per_seed_em) > 1 else 0.0:.3f} | "
                      f"{_ci(r.em_vs_random, 3)} |")
        lines.append(cells)
    return lines


def goal_lines(args, tasks: list[Task], all_results: dict[str, dict[str, MethodResult]],
               selections: list[Selected]) -> list[str]:
    """The issue's goals at the benchmark's budget, each checked from the numbers above."""
    out = []
    for task in tasks:
        res = all_results.get(task.name, {})
        for method in ("delift", "dualsft"):
            r = res.get(method)
            if r is None or r.vs_random is None:
                out.append(f"- {task.name} / {LABEL[method]}: not run (or not finished).")
                continue
            parts = [f"beats random (loss CI above zero): **{'yes' if r.vs_random.above_zero else 'no'}**"
                     f" {_ci(r.vs_random)}"]
            if r.em_vs_random is not None:
                parts.append(f"exact match CI above zero: "
                             f"**{'yes' if r.em_vs_random.above_zero else 'no'}** "
                             f"{_ci(r.em_vs_random, 3)}")
            if r.vs_rds is not None:
                parts.append("matches or beats RDS+ (loss CI not below zero): "
                             f"**{'yes' if not r.vs_rds.below_zero else 'no'}** {_ci(r.vs_rds)}")
            out.append(f"- {task.name} / {LABEL[method]}: " + "; ".join(parts) + ".")
    for s in selections:
        g = s.signals
        if s.method == "delift":
            ok = g["corrupt_ratio"] <= 0.5
            out.append(f"- DELIFT {s.stage}{' ' + s.task if s.task else ''}: corrupted rows at "
                       f"most 0.5x base: **{'yes' if ok else 'no'}** "
                       f"({_ratio(g['corrupt_ratio'])}); zero-gain picks at most 5%: "
                       f"**{'yes' if g['zero_gain_share'] <= 0.05 else 'no'}** "
                       f"({_pct(g['zero_gain_share'])}).")
        if s.method == "gast":
            n_budget = _budget_rows(args.budget, g["n_pool"])
            out.append(f"- GAST {s.task}: union of layer subsets within the budget: "
                       f"**{'yes' if g['n'] <= n_budget else 'no'}** ({g['n']} of "
                       f"{n_budget} allowed).")
    cont = {s.method: s for s in selections if s.stage == "continual"}
    if "delift" in cont and "embedding" in cont:
        d, e = cont["delift"].signals, cont["embedding"].signals
        out.append(f"- Continual stage, new-family share: DELIFT {_pct(d['new_family_share'])}"
                   f" vs embedding FLCG {_pct(e['new_family_share'])}: DELIFT ahead: "
                   f"**{'yes' if d['new_family_share'] > e['new_family_share'] else 'no'}**.")
    return out


def _budget_rows(budget: str, n_pool: int) -> int:
    from curator.selection import parse_budget

    return parse_budget(budget, n_pool)


def machine() -> str:
    import torch

    load = os.getloadavg()
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()}"
            f" threads); load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at write time")


def write_report(args, data: QualityData, tasks: list[Task], selections: list[Selected],
                 runs, timings: dict[str, float], command: str, status: str,
                 failures: list[str] = ()) -> None:
    s = data.summary()
    est = estimate_seconds(args)
    lines = [f"Command: `{command}`", "", "# Quality benchmark", "",
             f"Status: **{status}**" + ("" if status == "complete" else
                                        " (rewritten after every step; rerun the same "
                                        "command to resume)"), "",
             f"Machine: {machine()}. Written "
             f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}.", ""]
    if args.note:
        lines += [args.note, ""]
    if args.model == "tiny":
        lines += ["**Tiny model**: a tiny random model and tiny sizes; the numbers only show "
                  "that the script runs end to end.", ""]
    lines += [
        "## Data and design", "",
        f"Pool of {s['pool']} rows ({s['existing']} existing + {s['new']} new; "
        f"{s['corrupted']} corrupted: {s['corruptions']}; {s['duplicates']} near-duplicates); "
        f"families {s['families']}.", ""]
    for t in tasks:
        items = len(set(t.clusters))
        lines.append(f"- Task **{t.name}** ({t.family}): target set Q `{t.target_dataset}` "
                     f"for the task stage; {len(t.rows)} held-out evaluation rows "
                     f"({items} bootstrap units)" + (
                         f"; exact match: greedy, at most {t.max_new_tokens} new tokens, "
                         f"answer pattern `{t.answer_pattern}`" if t.exact_match else "")
                     + ".")
    lines += ["", f"Budget {args.budget}; methods {', '.join(LABEL[m] for m in args.methods)}; "
              f"training seeds 0..{args.seeds - 1} (random subset s trained with seed s); "
              f"{args.steps} steps, batch {args.batch_size}, AdamW lr {args.lr:g}, fp32, a "
              f"fresh model per run; DELIFT k={args.k}, self-coverage {args.self_coverage}, harm {args.harm}. "
              f"Differences are paired by seed and row; intervals: {args.boot} bootstrap "
              "replicates over seeds and evaluation units (`bench/quality_stats.py`).", ""]
    if data.notes:
        lines += ["Data notes: " + "; ".join(data.notes), ""]
    lines += ["Estimated minutes (docstring arithmetic): " + ", ".join(
        f"{k} {v / 60:.1f}" for k, v in est.items()) + ".", "",
        "Measured wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + ".", ""]
    all_results: dict[str, dict[str, MethodResult]] = {}
    for task in tasks:
        results, base = task_results(args, task, runs)
        all_results[task.name] = results
        if results or base:
            lines += [f"## Outcome: task {task.name} ({task.family})", "",
                      "Positive differences mean the method did better than random (loss: "
                      "random's minus the method's; exact match: the method's minus "
                      "random's). 'better': the 95% interval is above zero; 'worse': below.",
                      ""] + outcome_rows(task, results, base) + [""]
    if selections:
        lines += ["## Selections: cheap signals", "",
                  "Shares of the selected rows, with the ratio to the stage pool's base rate "
                  "in brackets. Zero-gain picks: made when the utilities had nothing left to "
                  "add (stored gain 0, or refilled by the stage); '-' for methods without "
                  "gains.", ""] + signal_rows(selections) + [""]
    if failures:
        lines += ["## Failures", "", "Each left its method out of the tables above (the "
                  "traceback is in the run's output):", ""] + [f"- {f}" for f in failures] \
            + [""]
    lines += ["## Goals", ""] + goal_lines(args, tasks, all_results, selections) + [""]
    notes = args.workdir / "notes.md"  # a hand-written reading of this run, kept with it
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    (args.workdir / "results.json").write_text(json.dumps({
        "selections": [dataclasses.asdict(x) | {"sample_ids": None, "pool_ids": None}
                       for x in selections],
        "runs": {"|".join(map(str, k)): {"label": v.get("label"), "train": v.get("train")}
                 for k, v in runs.items()},
        "timings": timings, "estimate": est}, indent=1, default=str))


# ---------------------------------------------------------------- main


def task_method(args, store, lm, data: QualityData, tasks: list[Task], task: Task,
                method: str, train: bool, selections: list[Selected], runs, counters,
                report, timed) -> None:
    """Select with one method for one task (random: one subset per seed) and fine-tune
    and evaluate each training seed."""
    for seed in (range(args.seeds) if method == "random" else [0]):
        t = time.monotonic()
        sel = run_selection(args, store, lm, data, "task", task, method, seed)
        selections.append(sel)
        timed("task-stage selections", t)
        if not train:
            report()
            continue
        t = time.monotonic()
        train_seeds = [seed] if method == "random" else range(args.seeds)
        evals = tasks if method in SHARED else [task]
        for s in train_seeds:
            runs[(task.name, method, s)] = ensure_run(args, store, sel, s, evals, counters)
            report()
        timed("training and evaluation", t)


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Run (or resume) the benchmark; returns counts of trained and cached runs."""
    args = parse_args(argv)
    command = "python bench/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.plan:
        for k, v in estimate_seconds(args).items():
            print(f"{k:34s} {v / 60:6.1f} min")
        return {"trained": 0, "cached": 0}
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    selections: list[Selected] = []
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    counters = {"trained": 0, "cached": 0}
    status = ["in progress"]
    failures: list[str] = []

    def report() -> None:
        write_report(args, data, tasks, selections, runs, timings, command, status[0],
                     failures)

    def timed(name: str, t: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.monotonic() - t

    t = time.monotonic()
    lm = scoring_model(args)
    data, store = prepare(args, lm.tokenizer)
    tasks = make_tasks(args, data)
    timed("data and ingest", t)
    print(json.dumps(data.summary()), flush=True)
    # Base model once (evaluated on every task), then task by task, method by method:
    # select, then train and evaluate its seeds, so an interrupted run leaves whole rows.
    train = not args.no_train and "task" in args.stages
    if train:
        t = time.monotonic()
        base = ensure_run(args, store, None, 0, tasks, counters)
        for task in tasks:
            runs[(task.name, "base", 0)] = base
        timed("training and evaluation", t)
    for task in (tasks if "task" in args.stages else []):
        for method in args.methods:
            try:
                task_method(args, store, lm, data, tasks, task, method, train, selections,
                            runs, counters, report, timed)
            except Exception as exc:  # noqa: BLE001 - one method failing keeps the others
                failures.append(f"task stage, {task.name}, {LABEL[method]}: "
                                f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
                report()
    t = time.monotonic()
    if "instruction" in args.stages:
        for method in STAGE_METHODS:
            if method not in args.methods:
                continue
            try:
                inst = run_selection(args, store, lm, data, "instruction", None, method, 0)
                selections.append(inst)
                if "continual" in args.stages:
                    selections.append(run_selection(args, store, lm, data, "continual",
                                                    None, method, 0,
                                                    previous=inst.selection_id))
            except Exception as exc:  # noqa: BLE001
                failures.append(f"instruction/continual, {LABEL[method]}: "
                                f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            report()
    timed("instruction and continual selections", t)
    status[0] = "complete" if not failures else f"complete, {len(failures)} failed"
    report()
    print(f"wrote {args.out} ({counters['trained']} runs trained, {counters['cached']} "
          f"from the cache, {len(failures)} failures)", flush=True)
    counters["failed"] = len(failures)
    return counters


if __name__ == "__main__":
    main()
