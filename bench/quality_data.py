"""The quality benchmark's data: a labelled, partly corrupted pool from ../shared/data.

What it builds (all sizes are options; see ``DataConfig``):
- a training pool mixed from the ``t0/`` task families (the family is the file-name prefix
  before the template name), self-instruct instances and GSM8K train rows, with prompt +
  response at most ``max_chars`` characters (short texts keep CPU runs small);
- a known share of corrupted responses: ``shuffled`` (the response of another row of the
  same family), ``truncated`` (cut to its first third) or ``other_family`` (the response of
  a row of another family);
- a few near-duplicates: a copy of a clean pool row whose prompt differs only in spacing
  (a new sample id, the same content to a reader);
- a target family: a few of its rows in the pool, a target set Q (task stage) and a
  held-out evaluation set, drawn from disjoint items (a t0 item is a row index, shared by
  the family's templates; GSM8K: target and eval come from its test split);
- an existing/new split for the continual stage whose families partly overlap;
- optionally a second target task scored by exact match (``em_task``): a BBH task
  (``bbh:sports_understanding``; a few of its rows in the pool, a target set and a
  held-out evaluation set from its other examples) or ``gsm8k`` (target and evaluation
  from its test split, the pool's GSM8K rows from train).

A t0 family has at most 200 items (the templates of a family share row indices), so a
held-out evaluation set of 200 or more rows takes each of its items under every template
(``eval_all_templates``); a benchmark then resamples items, not rows (``Row.item``).

Labels (source, family, corruption, duplicate_of) are kept beside the rows, keyed by the
sample id curator will give each row; the rows written for ingestion carry only
``prompt`` and ``response``, so no selector can see a label.
"""

from __future__ import annotations

import glob
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curator.records import Sample

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
ENDOFTEXT = "<|endoftext|>"
# The t0 families in ../shared/data/t0 (README: 42 templates from 8 families). trec's
# completions are empty in this copy, so it never enters the pool.
T0_FAMILIES = ("common_gen", "commonsense_qa", "cosmos_qa", "kilt_tasks_hotpotqa",
               "rotten_tomatoes", "sciq", "social_i_qa", "trec")
CORRUPTIONS = ("shuffled", "truncated", "other_family")


@dataclass
class DataConfig:
    pool_size: int = 480              # rows in the pool (existing + new), duplicates included
    target_family: str = "sciq"       # a t0 family, or "gsm8k"
    target_size: int = 20             # Q for the task stage
    eval_size: int = 50               # held-out rows for loss and exact match
    target_share: float = 0.10        # share of the pool from the target family
    gsm8k_share: float = 0.10
    self_instruct_share: float = 0.15
    corrupt_share: float = 0.18
    duplicate_share: float = 0.04
    new_share: float = 0.4            # share of the pool in the "new" version
    max_chars: int = 800              # prompt + response
    eval_all_templates: bool = False  # eval: every template of each eval item (eval_size rows)
    em_task: str | None = None        # second target: "bbh:<task>" or "gsm8k"
    em_target_size: int = 20
    em_eval_size: int = 200
    em_share: float = 0.10            # share of the pool from a BBH em_task
    families: tuple[str, ...] = ("common_gen", "commonsense_qa", "cosmos_qa",
                                 "kilt_tasks_hotpotqa", "rotten_tomatoes", "sciq",
                                 "social_i_qa")
    seed: int = 0


@dataclass
class Row:
    prompt: str
    response: str
    source: str                       # t0 | self_instruct | gsm8k
    family: str
    template: str = ""
    item: str = ""                    # what templates of one family share (leakage key)
    reference: str = ""               # clean response (corrupted rows keep the original)
    corruption: str | None = None
    duplicate_of: str | None = None
    split: str = ""                   # existing | new | target | eval

    @property
    def sample_id(self) -> str:
        return Sample.from_pair(self.prompt, self.response).sample_id

    def to_record(self) -> dict[str, str]:
        return {"prompt": self.prompt, "response": self.response}


@dataclass
class QualityData:
    config: DataConfig
    existing: list[Row]
    new: list[Row]
    target: list[Row]
    eval: list[Row]
    notes: list[str] = field(default_factory=list)
    em_target: list[Row] = field(default_factory=list)   # second task (config.em_task)
    em_eval: list[Row] = field(default_factory=list)

    @property
    def pool(self) -> list[Row]:
        return self.existing + self.new

    def labels(self) -> dict[str, Row]:
        """sample id -> row (with its labels) for every pool row."""
        return {r.sample_id: r for r in self.pool}

    def summary(self) -> dict[str, object]:
        pool = self.pool
        return {
            "pool": len(pool), "existing": len(self.existing), "new": len(self.new),
            "target": len(self.target), "eval": len(self.eval),
            "corrupted": sum(r.corruption is not None for r in pool),
            "corruptions": dict(Counter(r.corruption for r in pool if r.corruption)),
            "duplicates": sum(r.duplicate_of is not None for r in pool),
            "families": dict(sorted(Counter(r.family for r in pool).items())),
            "existing_families": sorted({r.family for r in self.existing}),
            "new_families": sorted({r.family for r in self.new}),
            "em_target": len(self.em_target), "em_eval": len(self.em_eval),
            "eval_items": len({r.item for r in self.eval}),
        }

    def write(self, folder: Path) -> dict[str, Path]:
        """JSONL files for ingestion (prompt/response only) and a labels file beside them."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, rows in (("existing", self.existing), ("new", self.new),
                           ("target", self.target), ("eval", self.eval),
                           ("em_target", self.em_target), ("em_eval", self.em_eval)):
            paths[name] = folder / f"{name}.jsonl"
            with paths[name].open("w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r.to_record(), ensure_ascii=False) + "\n")
        paths["labels"] = folder / "labels.json"
        paths["labels"].write_text(json.dumps(
            {"config": asdict(self.config), "summary": self.summary(),
             "rows": {r.sample_id: asdict(r) for r in [*self.pool, *self.target, *self.eval,
                                                       *self.em_target, *self.em_eval]}},
            indent=1, ensure_ascii=False))
        return paths


# ---------------------------------------------------------------- readers


def t0_family(file_stem: str) -> str:
    """'sciq_Direct_Question_Closed_Book_' -> 'sciq' (the longest known family prefix;
    unknown files fall back to their first word)."""
    known = [f for f in T0_FAMILIES if file_stem == f or file_stem.startswith(f + "_")]
    return max(known, key=len) if known else file_stem.split("_")[0]


def _clean(text: str) -> str:
    return text.replace(ENDOFTEXT, "").strip()


def read_t0(root: Path) -> dict[str, list[Row]]:
    """family -> rows of all its templates (empty completions dropped)."""
    out: dict[str, list[Row]] = {}
    for path in sorted(glob.glob(str(root / "t0" / "*.jsonl"))):
        stem = Path(path).stem
        family = t0_family(stem)
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                rec = json.loads(line)
                prompt, response = _clean(rec["prompt"]), _clean(rec["completion"])
                if prompt and response:
                    out.setdefault(family, []).append(Row(
                        prompt, response, "t0", family, stem[len(family) + 1:],
                        f"{family}:{i}", response))
    return out


def read_self_instruct(root: Path) -> list[Row]:
    rows = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        with open(root / "self_instruct" / name, encoding="utf-8") as fh:
            for line in fh:
                task = json.loads(line)
                for n, inst in enumerate(task.get("instances", [])):
                    extra = (inst.get("input") or "").strip()
                    prompt = task["instruction"].strip() + (f"\n\n{extra}" if extra else "")
                    response = (inst.get("output") or "").strip()
                    if prompt and response:
                        rows.append(Row(prompt, response, "self_instruct", "self_instruct",
                                        str(task.get("id", "")), f"si:{task.get('id')}:{n}",
                                        response))
    return rows


_CALC = re.compile(r"<<[^>]*>>")


def read_gsm8k(root: Path, split: str) -> list[Row]:
    name = "train_first2000.jsonl" if split == "train" else "test.jsonl"
    rows = []
    with open(root / "gsm8k" / name, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            rec = json.loads(line)
            answer = _CALC.sub("", rec["answer"]).strip()  # drop calculator annotations
            rows.append(Row(rec["question"].strip(), answer, "gsm8k", "gsm8k", split,
                            f"gsm8k:{split}:{i}", answer))
    return rows


def read_bbh(root: Path, task: str) -> list[Row]:
    """One BBH task's examples (family: the task name; no template)."""
    path = root / "bbh" / f"{task}.json"
    if not path.exists():
        known = sorted(p.stem for p in (root / "bbh").glob("*.json"))
        raise ValueError(f"unknown BBH task {task!r}; known: {', '.join(known)}")
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    return [Row(e["input"].strip(), str(e["target"]).strip(), "bbh", task, "", f"bbh:{task}:{i}",
                str(e["target"]).strip()) for i, e in enumerate(examples)]


def em_family(em_task: str | None) -> str | None:
    """The family label of the second task's rows: 'bbh:navigate' -> 'navigate'."""
    if em_task is None:
        return None
    if em_task == "gsm8k":
        return "gsm8k"
    if em_task.startswith("bbh:"):
        return em_task[4:]
    raise ValueError(f"em_task must be 'gsm8k' or 'bbh:<task>', got {em_task!r}")


def gsm8k_final(text: str) -> str:
    """The final answer of a GSM8K solution: the text after '#### ' (commas dropped)."""
    _, sep, tail = text.rpartition("####")
    return (tail if sep else text).strip().replace(",", "")


# ---------------------------------------------------------------- building


def _fits(row: Row, max_chars: int, fits: Callable[[Row], bool] | None) -> bool:
    return len(row.prompt) + len(row.response) <= max_chars and (fits is None or fits(row))


def _spread(rows: list[Row], n: int, rng: random.Random, used_items: set[str]) -> list[Row]:
    """n rows with distinct items, spread over templates (round robin)."""
    by_template: dict[str, list[Row]] = {}
    for r in rows:
        if r.item not in used_items:
            by_template.setdefault(r.template, []).append(r)
    for group in by_template.values():
        rng.shuffle(group)
    picked: list[Row] = []
    templates = sorted(by_template)
    while len(picked) < n and any(by_template.values()):
        for t in templates:
            while by_template[t] and by_template[t][-1].item in used_items:
                by_template[t].pop()
            if by_template[t] and len(picked) < n:
                r = by_template[t].pop()
                used_items.add(r.item)
                picked.append(r)
    return picked


def _all_templates(rows: list[Row], n: int, rng: random.Random, used_items: set[str]
                   ) -> list[Row]:
    """Whole items (every row of an item, one per template) in random order until at
    least n rows."""
    by_item: dict[str, list[Row]] = {}
    for r in rows:
        if r.item not in used_items:
            by_item.setdefault(r.item, []).append(r)
    items = sorted(by_item)
    rng.shuffle(items)
    picked: list[Row] = []
    for item in items:
        if len(picked) >= n:
            break
        used_items.add(item)
        picked += sorted(by_item[item], key=lambda r: r.template)
    return picked


def _truncate(text: str) -> str:
    words = text.split()
    if len(words) >= 3:
        return " ".join(words[: max(1, len(words) // 3)])
    if len(words) == 2:
        return words[0]
    return text[: max(1, len(text) // 2)]


def _corrupt(pool: list[Row], share: float, rng: random.Random, max_chars: int) -> None:
    """Corrupt round(share * len(pool)) rows in place, the three kinds in turn (a
    replacement response is drawn among those that keep the row within max_chars)."""
    n = round(share * len(pool))
    victims = rng.sample(range(len(pool)), n)
    by_family: dict[str, list[int]] = {}
    for i, r in enumerate(pool):
        by_family.setdefault(r.family, []).append(i)
    for k, i in enumerate(victims):
        row = pool[i]
        kind = CORRUPTIONS[k % len(CORRUPTIONS)]
        if kind == "shuffled":
            room = max_chars - len(row.prompt)
            others = [pool[j].reference for j in by_family[row.family]
                      if pool[j].reference.strip() != row.reference.strip()
                      and len(pool[j].reference) <= room]
            if not others:  # every row of the family answers the same (rotten_tomatoes)
                kind = "other_family"
            else:
                row.response = rng.choice(others)
        if kind == "truncated":
            cut = _truncate(row.reference)
            if cut == row.reference:
                kind = "other_family"
            else:
                row.response = cut
        if kind == "other_family":
            others = [r.reference for r in pool if r.family != row.family
                      and len(r.reference) <= max_chars - len(row.prompt)]
            row.response = rng.choice(others)
        row.corruption = kind


def _respace(prompt: str, rng: random.Random) -> str:
    """The same prompt with one space doubled (or a trailing space when it has none)."""
    spaces = [m.start() for m in re.finditer(" ", prompt)]
    if not spaces:
        return prompt + " "
    at = rng.choice(spaces)
    return prompt[:at] + " " + prompt[at:]


def build(config: DataConfig | None = None, root: Path = DATA_ROOT,
          fits: Callable[[Row], bool] | None = None) -> QualityData:
    """Build the pool, target and eval sets. ``fits``: an extra length check (e.g. a token
    count with the model's tokenizer) on top of ``config.max_chars``."""
    cfg = config or DataConfig()
    rng = random.Random(cfg.seed)
    notes: list[str] = []
    t0 = read_t0(root)
    for fam in sorted(t0):
        t0[fam] = [r for r in t0[fam] if _fits(r, cfg.max_chars, fits)]
    families = [f for f in cfg.families if f in t0 and t0[f] and f != cfg.target_family]
    missing = [f for f in cfg.families if f not in t0 or not t0[f]]
    if missing:
        notes.append(f"t0 families with no usable rows, left out: {', '.join(missing)}")

    n_dup = round(cfg.duplicate_share * cfg.pool_size)
    n_rows = cfg.pool_size - n_dup
    n_target = round(cfg.target_share * n_rows)
    n_gsm = 0 if cfg.target_family == "gsm8k" else round(cfg.gsm8k_share * n_rows)
    n_si = round(cfg.self_instruct_share * n_rows)
    em_fam = em_family(cfg.em_task)
    if em_fam is not None and em_fam == cfg.target_family:
        raise ValueError("the exact-match task must differ from the target family")
    n_em = round(cfg.em_share * n_rows) if cfg.em_task and cfg.em_task != "gsm8k" else 0
    n_rest = n_rows - n_target - n_gsm - n_si - n_em
    per_family = [n_rest // len(families) + (1 if i < n_rest % len(families) else 0)
                  for i in range(len(families))]

    # Target family first: eval, then Q, then its pool rows, all from disjoint items.
    used: set[str] = set()
    if cfg.target_family == "gsm8k":
        test = [r for r in read_gsm8k(root, "test") if _fits(r, cfg.max_chars, fits)]
        rng.shuffle(test)
        eval_rows, target_rows = test[:cfg.eval_size], test[cfg.eval_size:
                                                            cfg.eval_size + cfg.target_size]
        train = [r for r in read_gsm8k(root, "train") if _fits(r, cfg.max_chars, fits)]
        target_pool = _spread(train, n_target, rng, used)
    else:
        if cfg.target_family not in t0:
            raise ValueError(f"unknown target family {cfg.target_family!r}; known: "
                             f"{', '.join(sorted(t0))} or gsm8k")
        rows = t0[cfg.target_family]
        eval_rows = (_all_templates if cfg.eval_all_templates else _spread)(
            rows, cfg.eval_size, rng, used)
        target_rows = _spread(rows, cfg.target_size, rng, used)
        target_pool = _spread(rows, n_target, rng, used)
    for r in eval_rows:
        r.split = "eval"
    for r in target_rows:
        r.split = "target"
    short = [(name, got, want) for name, got, want in (
        ("eval", len(eval_rows), cfg.eval_size), ("target", len(target_rows), cfg.target_size),
        ("target family in pool", len(target_pool), n_target)) if got < want]
    for name, got, want in short:
        notes.append(f"{name}: only {got} of {want} rows available")

    em_target: list[Row] = []
    em_eval: list[Row] = []
    em_pool: list[Row] = []
    if cfg.em_task == "gsm8k":  # target and eval from test; the pool's rows come from train
        test = [r for r in read_gsm8k(root, "test") if _fits(r, cfg.max_chars, fits)]
        rng.shuffle(test)
        em_eval = test[:cfg.em_eval_size]
        em_target = test[cfg.em_eval_size:cfg.em_eval_size + cfg.em_target_size]
    elif cfg.em_task:
        rows_em = [r for r in read_bbh(root, em_fam) if _fits(r, cfg.max_chars, fits)]
        em_eval = _spread(rows_em, cfg.em_eval_size, rng, used)
        em_target = _spread(rows_em, cfg.em_target_size, rng, used)
        em_pool = _spread(rows_em, n_em, rng, used)
    for r in em_eval:
        r.split = "em_eval"
    for r in em_target:
        r.split = "em_target"
    for name, got, want in (("exact-match eval", len(em_eval), cfg.em_eval_size),
                            ("exact-match target", len(em_target), cfg.em_target_size),
                            ("exact-match task in pool", len(em_pool), n_em)):
        if cfg.em_task and got < want:
            notes.append(f"{name}: only {got} of {want} rows available")

    pool: list[Row] = list(target_pool) + em_pool
    for fam, n in zip(families, per_family, strict=True):
        pool += _spread(t0[fam], n, rng, used)
    if n_gsm:
        train = [r for r in read_gsm8k(root, "train") if _fits(r, cfg.max_chars, fits)]
        pool += _spread(train, n_gsm, rng, used)
    si = [r for r in read_self_instruct(root) if _fits(r, cfg.max_chars, fits)]
    pool += _spread(si, n_si, rng, used)

    # Drop accidental exact duplicates (curator would merge them into one sample).
    seen: set[str] = set()
    unique = []
    for r in pool:
        if r.sample_id not in seen:
            seen.add(r.sample_id)
            unique.append(r)
    pool = unique
    _corrupt(pool, cfg.corrupt_share, rng, cfg.max_chars - 1)

    clean = [r for r in pool if r.corruption is None]
    for original in rng.sample(clean, min(n_dup, len(clean))):
        copy = Row(_respace(original.prompt, rng), original.response, original.source,
                   original.family, original.template, original.item, original.reference,
                   duplicate_of=original.sample_id)
        pool.append(copy)

    existing, new = split_existing_new(pool, cfg, rng)
    return QualityData(cfg, existing, new, target_rows, eval_rows, notes, em_target, em_eval)


def split_existing_new(pool: list[Row], cfg: DataConfig, rng: random.Random
                       ) -> tuple[list[Row], list[Row]]:
    """Partly overlapping families: the first third of the families (sorted) only in the
    existing version, the last third only in the new one, the rest in both (split at
    random). Near-duplicates go with their original."""
    fams = sorted({r.family for r in pool})
    third = max(1, len(fams) // 3)
    old_only, new_only = set(fams[:third]), set(fams[-third:])
    originals = [r for r in pool if r.duplicate_of is None]
    shared = [r for r in originals if r.family not in old_only | new_only]
    n_new_target = round(cfg.new_share * len(originals))
    n_new_fixed = sum(r.family in new_only for r in originals)
    n_new_shared = min(len(shared), max(0, n_new_target - n_new_fixed))
    rng.shuffle(shared)
    new_ids = {id(r) for r in originals if r.family in new_only}
    new_ids |= {id(r) for r in shared[:n_new_shared]}
    by_sid = {r.sample_id: r for r in originals}
    existing, new = [], []
    for r in pool:
        anchor = by_sid[r.duplicate_of] if r.duplicate_of else r
        is_new = id(anchor) in new_ids
        r.split = "new" if is_new else "existing"
        (new if is_new else existing).append(r)
    return existing, new
