"""Data for the quality-prior benchmark (``bench/quality_prior.py``): a pool where the
choice *inside* the target family decides.

Target task ``mc``: multiple-choice questions with the options listed in the prompt, from
three T0 templates in ../shared/data (sciq "Multiple Choice Closed Book", commonsense_qa
"question answering", social_i_qa "Show choices and generate answer"; 200 rows each).
- pool: ``in_family`` MC rows (default 80, split evenly over the three sources), of which
  ``corrupt_share`` (40%) are corrupted, the four kinds in turn: ``other_family`` (another
  family's answer), ``wrong_option`` (another option listed in the row's own prompt: the
  hard case), ``truncated`` (the answer cut short) and ``shuffled`` (another MC row's
  answer); plus ``others`` rows from the rest of T0, self-instruct and GSM8K, of which
  ``other_corrupt_share`` are corrupted (other_family, truncated, shuffled), so the
  instruction and continual stages have corrupted rows too;
- target set Q: ``target_size`` clean MC rows (not in the pool);
- evaluation: every remaining MC row whose answer is one of its parsed options (>= 400),
  each an item of its own (no item is asked under two templates: the three sources are
  different data sets, and no other template of their families enters the pool).
The pool is split into v1 (``existing_share``) and v2 (the rest) for the continual stage.
Budgets below the clean in-family count (48 of 200 rows) make the choice inside the family
decide. Deterministic given the seed.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quality_data import (
    DATA_ROOT,
    Row,
    _truncate,
    read_gsm8k,
    read_self_instruct,
    read_t0,
)

MC_TEMPLATES = {
    "sciq": "Multiple_Choice_Closed_Book_",
    "commonsense_qa": "question_answering",
    "social_i_qa": "Show_choices_and_generate_answer",
}
MC_KINDS = ("other_family", "wrong_option", "truncated", "shuffled")
OTHER_KINDS = ("other_family", "truncated", "shuffled")


def parse_options(prompt: str, family: str) -> list[str]:
    """The options a row's prompt lists (empty when they cannot be read)."""
    if family == "social_i_qa":
        m = re.search(r"Possible answers: (.*)$", prompt.strip(), flags=re.S)
        return [o.strip() for o in m.group(1).split(", ")] if m else []
    return [line[2:].strip() for line in prompt.splitlines() if line.startswith("- ")]


@dataclass
class PriorConfig:
    in_family: int = 80
    corrupt_share: float = 0.4
    others: int = 120
    other_corrupt_share: float = 0.2
    target_size: int = 20
    eval_size: int = 450
    existing_share: float = 0.6
    max_chars: int = 600
    seed: int = 0


@dataclass
class PriorData:
    config: PriorConfig
    existing: list[Row]
    new: list[Row]
    target: list[Row]
    eval: list[Row]
    options: dict[str, list[str]] = field(default_factory=dict)  # eval sample id -> options

    @property
    def pool(self) -> list[Row]:
        return self.existing + self.new

    def labels(self) -> dict[str, Row]:
        return {r.sample_id: r for r in self.pool}

    def summary(self) -> dict[str, object]:
        pool = self.pool
        fam = [r for r in pool if r.family == "mc"]
        return {"pool": len(pool), "existing": len(self.existing), "new": len(self.new),
                "in_family": len(fam),
                "in_family_clean": sum(r.corruption is None for r in fam),
                "corrupted": sum(r.corruption is not None for r in pool),
                "corruptions": dict(Counter(r.corruption for r in pool if r.corruption)),
                "target": len(self.target), "eval": len(self.eval),
                "families": dict(sorted(Counter(r.family for r in pool).items()))}

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, rows in (("existing", self.existing), ("new", self.new),
                           ("target", self.target)):
            paths[name] = folder / f"{name}.jsonl"
            with paths[name].open("w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r.to_record(), ensure_ascii=False) + "\n")
        paths["labels"] = folder / "labels.json"
        paths["labels"].write_text(json.dumps(
            {"config": asdict(self.config), "summary": self.summary(),
             "rows": {r.sample_id: asdict(r) for r in self.pool}}, indent=1,
            ensure_ascii=False))
        return paths


def _mc_rows(t0: dict[str, list[Row]]) -> list[tuple[Row, list[str]]]:
    out = []
    for family, template in MC_TEMPLATES.items():
        for r in t0.get(family, []):
            if r.template != template:
                continue
            options = parse_options(r.prompt, family)
            if len(options) >= 2 and r.response in options:
                out.append((Row(r.prompt, r.response, "t0", "mc", f"{family}:{template}",
                                r.item, r.response), options))
    return out


def build(config: PriorConfig | None = None, root: Path = DATA_ROOT) -> PriorData:
    cfg = config or PriorConfig()
    rng = random.Random(cfg.seed)
    t0 = read_t0(root)
    mc = _mc_rows(t0)
    by_source: dict[str, list[tuple[Row, list[str]]]] = {}
    for row, opts in mc:
        by_source.setdefault(row.template, []).append((row, opts))
    for rows in by_source.values():
        rng.shuffle(rows)
    sources = sorted(by_source)
    # pool and target rows spread evenly over the three sources; the rest is evaluation
    n_src = len(sources)
    pool_mc: list[tuple[Row, list[str]]] = []
    target_mc: list[tuple[Row, list[str]]] = []
    for k, src in enumerate(sources):
        rows = by_source[src]
        n_pool = cfg.in_family // n_src + (k < cfg.in_family % n_src)
        n_t = cfg.target_size // n_src + (k < cfg.target_size % n_src)
        pool_mc += rows[:n_pool]
        target_mc += rows[n_pool:n_pool + n_t]
        by_source[src] = rows[n_pool + n_t:]
    rest = [x for src in sources for x in by_source[src]]
    rng.shuffle(rest)
    eval_mc = rest[:cfg.eval_size]

    # the other rows: T0 families other than the MC sources' families, self-instruct, GSM8K
    pool_other: list[Row] = []
    others = [r for fam, rows in t0.items() if fam not in MC_TEMPLATES for r in rows
              if len(r.prompt) + len(r.response) <= cfg.max_chars]
    others += [r for r in read_self_instruct(root)
               if len(r.prompt) + len(r.response) <= cfg.max_chars]
    others += [r for r in read_gsm8k(root, "train")
               if len(r.prompt) + len(r.response) <= cfg.max_chars]
    rng.shuffle(others)
    seen_items: set[str] = set()
    for r in others:
        if r.item in seen_items:
            continue  # one template per item: no near-duplicate questions in the pool
        seen_items.add(r.item)
        pool_other.append(Row(r.prompt, r.response, r.source, r.family, r.template, r.item,
                              r.response))
        if len(pool_other) == cfg.others:
            break

    pool_rows = [r for r, _ in pool_mc]
    options = {id(r): o for r, o in pool_mc}
    _corrupt_family(pool_rows, options, cfg.corrupt_share, pool_other, rng)
    _corrupt_others(pool_other, cfg.other_corrupt_share, rng)
    pool = pool_rows + pool_other
    rng.shuffle(pool)
    n_existing = round(cfg.existing_share * len(pool))
    existing, new = pool[:n_existing], pool[n_existing:]
    for r in existing:
        r.split = "existing"
    for r in new:
        r.split = "new"
    target = [r for r, _ in target_mc]
    for r in target:
        r.split = "target"
    ev = []
    opts: dict[str, list[str]] = {}
    for r, o in eval_mc:
        r.split = "eval"
        ev.append(r)
        opts[r.sample_id] = o
    return PriorData(cfg, existing, new, target, ev, opts)


def _corrupt_family(rows: list[Row], options: dict[int, list[str]], share: float,
                    donors: list[Row], rng: random.Random) -> None:
    """Corrupt round(share * len(rows)) in-family rows, the four kinds in turn."""
    n = round(share * len(rows))
    picked = rng.sample(range(len(rows)), n)
    for k, i in enumerate(picked):
        r = rows[i]
        kind = MC_KINDS[k % len(MC_KINDS)]
        if kind == "other_family":
            new = rng.choice([d.response for d in donors if len(d.response) < 200])
        elif kind == "wrong_option":
            new = rng.choice([o for o in options[id(r)] if o != r.response])
        elif kind == "truncated":
            new = _truncate(r.response)
            if new == r.response:
                new = r.response[: max(1, len(r.response) // 2)]
        else:
            new = rng.choice([x.reference for x in rows if x.reference != r.reference])
        r.response, r.corruption = new, kind


def _corrupt_others(rows: list[Row], share: float, rng: random.Random) -> None:
    n = round(share * len(rows))
    picked = rng.sample(range(len(rows)), n)
    for k, i in enumerate(picked):
        r = rows[i]
        kind = OTHER_KINDS[k % len(OTHER_KINDS)]
        if kind == "truncated":
            new = _truncate(r.response)
        else:
            donors = [x for x in rows if (x.family != r.family) == (kind == "other_family")
                      and x is not r]
            new = rng.choice(donors).reference if donors else _truncate(r.response)
        if new == r.response:
            new = r.response[: max(1, len(r.response) // 2)]
        r.response, r.corruption = new, kind
