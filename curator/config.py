"""Typed configs for curation runs and recipe files (YAML or JSON).

A recipe is validated completely before any work starts: an unknown key or a bad value is
reported with its path in the file (``stages[1].budget: ...``), so a typo never costs a
half-hour scoring run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator.budget import read_budget, read_share
from curator.vocabulary import (
    CONTINUAL_POOLS,
    DEFAULT_FUNCTION,
    DEFAULT_HARM,
    DEFAULT_WARMUP_STEPS,
    DISTANCES,
    ENGINES,
    EXPORT_FORMATS,
    GRADIENT_NORMALIZE,
    HARM_RULES,
    MASK_RANKS,
    METHODS,
    OPTIMIZERS,
    PRIOR_OFF_BY_DEFAULT,
    QUALITY_SIGNALS,
    SCORED_TOKENS,
    SELF_COVERAGE,
    STAGES,
    TARGET_METHODS,
    canonical_function,
)

# hubs: "auto" scores k hub examples against every target when a DELIFT stage keeps at most
# this share of its pool: the kNN graph alone falls short of the dense selection there
# (bench/results/pruning.md), and at larger budgets it does not need them.
AUTO_HUBS_MAX_SHARE = 0.2
# ScoringOptions fields that say where scoring runs, not what it computes.
ENGINE_KEYS = ("engine", "workers", "threads", "ray_address")


class RecipeError(ValueError):
    """A recipe or option value is invalid; the message names the key, and ``key`` holds
    it (``stages[1].budget``; None for an error about the recipe as a whole), so a caller
    can say it in its own words (the CLI names the flag)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def check_budget(value: Any, where: str) -> str:
    """Budgets are kept as given ("30%", "100", "0.3") and parsed against the pool later;
    the grammar and its checks are ``curator.budget.read_budget``'s, the one place."""
    try:
        return read_budget(value).text
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}", key=where) from exc


def check_param_budget(value: Any, where: str) -> str:
    """A parameter budget (always a share: ``curator.budget.read_share``), kept as given."""
    try:
        return read_share(value).text
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}", key=where) from exc


@dataclass
class ScoringOptions:
    """How pairwise utilities are computed (DELIFT) and candidate pairs are chosen."""

    k: int = 16                       # neighbours per target in the candidate graph
    distance: str = "nll"             # mean NLL of the answer tokens (bench/quality_prior.py:
                                      #   +0.26 nats over "prob-l2", the paper's distance)
    tokens: str = "answer"            # DELIFT: d over the answer's tokens, or the whole
                                      #   "response" (with the template's end-of-turn tokens)
    batch_size: int = 16
    max_length: int = 1024            # tokens per scored sequence (capped by the model)
    dense: bool = False               # all pairs: the reference for small sets
    query_k: int | None = None        # targets x pool graphs: None = auto, 0 = every pool item
    dense_target: int = 20_000        # DELIFT task stage, query_k auto: score every target x
                                      #   pool pair when there are at most this many (0: off),
                                      #   as the reference does, instead of embedding kNN
    hubs: int | str = "auto"          # + all pairs of the h examples most helpful to their
                                      #   kNN targets (what small budgets miss; 0: off;
                                      #   "auto": k of them at budgets <= 20%, see resolved_hubs)
    dtype: str = "auto"               # auto: bf16 on CUDA and on CPUs with native bf16
    expand: float = 2.0               # DELIFT: when greedy runs out of scored pairs, score up
                                      #   to this many times the stage's graph pairs more where
                                      #   the kernel has no evidence (0: off)
    # Where scoring runs (curator/scoring/engine.py); none of these changes a score, so
    # they are not part of a stage's key (ENGINE_KEYS).
    engine: str = "local"             # "local" (this process) or "ray" (an actor pool)
    workers: int | None = None        # ray: actors (None: one per GPU, else CPUs / threads)
    threads: int = 1                  # ray: torch threads per CPU actor
    ray_address: str | None = None    # ray: a running cluster (None: RAY_ADDRESS, else local)

    def validate(self, where: str = "scoring") -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise RecipeError(f"{where}.k must be a positive integer, got {self.k!r}",
                              key=f"{where}.k")
        if self.distance not in DISTANCES:
            raise RecipeError(f"{where}.distance must be one of {', '.join(DISTANCES)}, "
                              f"got {self.distance!r}", key=f"{where}.distance")
        if self.tokens not in SCORED_TOKENS:
            raise RecipeError(f"{where}.tokens must be one of {', '.join(SCORED_TOKENS)}, "
                              f"got {self.tokens!r}", key=f"{where}.tokens")
        if self.query_k is not None and (isinstance(self.query_k, bool)
                                         or not isinstance(self.query_k, int)
                                         or self.query_k < 0):
            raise RecipeError(f"{where}.query_k must be an integer >= 0 (0: all pairs)",
                              key=f"{where}.query_k")
        if isinstance(self.dense_target, bool) or not isinstance(self.dense_target, int) \
                or self.dense_target < 0:
            raise RecipeError(f"{where}.dense_target must be an integer >= 0 (0: off), got "
                              f"{self.dense_target!r}", key=f"{where}.dense_target")
        if self.hubs != "auto" and (isinstance(self.hubs, bool) or not isinstance(self.hubs, int)
                                    or self.hubs < 0):
            raise RecipeError(f"{where}.hubs must be 'auto' or an integer >= 0 (0: off), "
                              f"got {self.hubs!r}", key=f"{where}.hubs")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise RecipeError(f"{where}.batch_size must be a positive integer",
                              key=f"{where}.batch_size")
        if not isinstance(self.max_length, int) or self.max_length < 16:
            raise RecipeError(f"{where}.max_length must be an integer >= 16",
                              key=f"{where}.max_length")
        if isinstance(self.expand, bool) or not isinstance(self.expand, (int, float)) \
                or not 0 <= self.expand <= 100:
            raise RecipeError(f"{where}.expand must be a number in [0, 100] (0: off), "
                              f"got {self.expand!r}", key=f"{where}.expand")
        if self.engine not in ENGINES:
            raise RecipeError(f"{where}.engine must be one of {', '.join(ENGINES)}, "
                              f"got {self.engine!r}", key=f"{where}.engine")
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if (value is not None or name == "threads") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RecipeError(f"{where}.{name} must be a positive integer, got {value!r}",
                                  key=f"{where}.{name}")
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise RecipeError(f"{where}.ray_address must be a string (host:port or auto)",
                              key=f"{where}.ray_address")
        if self.dtype not in ("auto", "bf16", "fp32", "fp16", "bfloat16", "float32", "float16"):
            raise RecipeError(f"{where}.dtype must be auto, bf16, fp16 or fp32",
                              key=f"{where}.dtype")

    def resolved_hubs(self, n_select: int | None = None, n_pool: int | None = None) -> int:
        """How many hub examples to score: ``hubs`` itself when it is a count; for "auto",
        ``k`` when a selection of ``n_select`` from ``n_pool`` keeps at most
        AUTO_HUBS_MAX_SHARE of the pool, else 0 (also 0 when no budget is known, as in
        ``curator score utility``, and for dense scoring, which has every pair already)."""
        if self.hubs != "auto":
            return int(self.hubs)
        if self.dense or n_select is None or not n_pool:
            return 0
        return self.k if n_select <= AUTO_HUBS_MAX_SHARE * n_pool else 0


@dataclass
class GradientOptions:
    """DualSFT's direction, prior and mask (``gradient:`` in a stage of a recipe).

    As in the reference, scoring starts with a warm-up: a copy of the model trained for
    ``warmup_steps`` AdamW steps (learning rate ``eta``) on a 5% slice of the pool is the
    model every gradient is taken at, and the original is the frozen reference of the KL
    self-distillation prior v_prior. ``warmup_steps`` 0 skips it: the scored model is the
    reference, v_prior is zero and ``lambda_prior`` has no effect (the selection's config
    says which). ``normalize`` "unit" scores samples by ``<u, g_n> / |g_n|`` (unit-norm
    per-sample gradients, as LESS), "none" by ``<u, g_n>`` (the reference).
    """

    warmup_steps: int = DEFAULT_WARMUP_STEPS  # 0: no warm-up, v_prior = 0
    eta: float = 2e-5                 # fine-tuning learning rate u is built for (and warm-up lr)
    lambda_new: float = 1.0           # weight of v_new (target / held-out gradient)
    lambda_prior: float = 1.0         # weight of v_prior (KL to the frozen base on anchors)
    tau: float = 2.0                  # temperature of the self-distillation
    mask_rank: str = "signed"         # rank parameters by signed phi (reference) or "abs"
    mask_spread: float = 0.0          # share of the mask spread over (layer, kind) cells
    # "none", the reference's <u, g_n>: with training fixed, bench/quality_prior.py (session
    # 11) trains 0.11 nats [0.02, 0.22] better on it than on unit-norm scores (LESS's)
    normalize: str = "none"

    def validate(self, where: str = "gradient") -> None:
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise RecipeError(f"{where}.warmup_steps must be an integer >= 0, got "
                              f"{self.warmup_steps!r}")
        for name in ("eta", "tau"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise RecipeError(f"{where}.{name} must be a finite number > 0, got {value!r}")
        for name in ("lambda_new", "lambda_prior"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise RecipeError(f"{where}.{name} must be a finite number, got {value!r}")
        if self.mask_rank not in MASK_RANKS:
            raise RecipeError(f"{where}.mask_rank must be one of {', '.join(MASK_RANKS)}, got "
                              f"{self.mask_rank!r}")
        value = self.mask_spread
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise RecipeError(f"{where}.mask_spread must be a number in [0, 1], got {value!r}")
        if self.normalize not in GRADIENT_NORMALIZE:
            raise RecipeError(f"{where}.normalize must be one of "
                              f"{', '.join(GRADIENT_NORMALIZE)}, got {self.normalize!r}")




@dataclass
class QualityOptions:
    """The quality prior (``quality:`` in a stage of a recipe; curator/stages/quality.py).

    ``signal``: which of the model's own-loss signals judges a row, as a z-score among its
    ``k`` most similar pool rows (so a hard family is not punished for being hard).
    ``drop``: "auto" leaves out rows whose z-score is above AUTO_Z or whose IFD is >= 1
    (the prompt does not make the answer likelier), at most AUTO_MAX_DROP of the pool;
    "N%" the N% worst rows; "off" none. ``weight``: lambda of the modular term
    ``lambda * sum_{a in A} q(a)`` added to a greedy method's objective (q in [0, 1], higher
    for a better row; it keeps the function monotone submodular); RDS+ adds it to the
    similarities it ranks by. 0: off. Both are on by default (bench/quality_prior.py: the
    filter and the term together beat the filter alone, which beats none); ``quality: off``
    in a recipe (``QualityOptions.off()``) turns the prior off.
    """

    signal: str = "combined"
    drop: str = "auto"
    weight: float = 1.0
    k: int = 16

    @classmethod
    def off(cls) -> QualityOptions:
        return cls(drop="off", weight=0.0)

    def validate(self, where: str = "quality") -> None:
        if self.signal not in QUALITY_SIGNALS:
            raise RecipeError(f"{where}.signal must be one of {', '.join(QUALITY_SIGNALS)}, "
                              f"got {self.signal!r}", key=f"{where}.signal")
        drop = str(self.drop).strip()
        ok = drop in ("auto", "off")
        if not ok and drop.endswith("%"):
            try:
                ok = 0 <= float(drop[:-1]) < 100
            except ValueError:
                ok = False
        if not ok:
            raise RecipeError(f"{where}.drop must be 'auto', 'off' or a percentage below 100% "
                              f"(10%), got {self.drop!r}", key=f"{where}.drop")
        self.drop = drop
        value = self.weight
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise RecipeError(f"{where}.weight must be a finite number >= 0, got {value!r}",
                              key=f"{where}.weight")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise RecipeError(f"{where}.k must be a positive integer, got {self.k!r}",
                              key=f"{where}.k")

    @property
    def active(self) -> bool:
        return self.drop != "off" or self.weight > 0


@dataclass
class StageSpec:
    """One selection step of a recipe."""

    stage: str = "instruction"
    method: str = "delift"
    budget: str = "30%"
    function: str | None = None       # default per stage: DEFAULT_FUNCTION
    version: int | str | None = None  # dataset version (default: latest)
    target: str | None = None         # dataset name of the target set (task stage)
    parent: str | None = None         # continual: "previous", a stage name, a selection id
    pool: str = "new"                 # continual: "new" (added since the parent) or "all"
    optimizer: str = "lazy"
    eta: float = 1.0
    nu: float = 1.0
    seed: int = 0
    param_budget: str | None = None   # DualSFT: share of parameters in the mask
    self_coverage: str = "best"       # DELIFT kernels: "best" or "one" (scoring/kernels.py)
    gradient: GradientOptions = field(default_factory=GradientOptions)  # DualSFT only
    quality: QualityOptions = field(default_factory=QualityOptions)  # every model method
    harm: str = DEFAULT_HARM          # DELIFT: "mean" leaves out examples whose mean utility
                                      #   over their scored pairs is negative; "mean+fit" also
                                      #   those their nearest examples do not fit; "off"
    name: str | None = None

    def validate(self, where: str) -> None:
        if self.stage not in STAGES:
            raise RecipeError(f"{where}.stage must be one of {', '.join(STAGES)}, "
                              f"got {self.stage!r}", key=f"{where}.stage")
        if self.method not in METHODS:
            raise RecipeError(f"{where}.method must be one of {', '.join(METHODS)}, "
                              f"got {self.method!r}", key=f"{where}.method")
        self.budget = check_budget(self.budget, f"{where}.budget")
        if self.param_budget is not None:
            self.param_budget = check_param_budget(self.param_budget, f"{where}.param_budget")
        if self.function is not None:
            try:
                canonical_function(self.function)
            except ValueError as exc:
                raise RecipeError(f"{where}.function: {exc}", key=f"{where}.function") from exc
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"{where}.optimizer must be one of {', '.join(OPTIMIZERS)}",
                              key=f"{where}.optimizer")
        if self.self_coverage not in SELF_COVERAGE:
            raise RecipeError(f"{where}.self_coverage must be 'best' or 'one', got "
                              f"{self.self_coverage!r}", key=f"{where}.self_coverage")
        if self.pool not in CONTINUAL_POOLS:
            raise RecipeError(f"{where}.pool must be 'new' or 'all', got {self.pool!r}",
                              key=f"{where}.pool")
        if isinstance(self.gradient, dict):
            self.gradient = _build(GradientOptions, self.gradient, f"{where}.gradient")
        if not isinstance(self.gradient, GradientOptions):
            raise RecipeError(f"{where}.gradient: expected a mapping", key=f"{where}.gradient")
        self.gradient.validate(f"{where}.gradient")
        if self.method != "dualsft" and self.gradient != GradientOptions():
            raise RecipeError(f"{where}.gradient: these settings apply to method dualsft only "
                              f"(method is {self.method})", key=f"{where}.gradient")
        if self.quality in ("off", False):
            self.quality = QualityOptions.off()
        if isinstance(self.quality, dict):
            self.quality = _build(QualityOptions, self.quality, f"{where}.quality")
        if not isinstance(self.quality, QualityOptions):
            raise RecipeError(f"{where}.quality: expected a mapping", key=f"{where}.quality")
        self.quality.validate(f"{where}.quality")
        if self.harm not in HARM_RULES:
            raise RecipeError(f"{where}.harm must be one of {', '.join(HARM_RULES)}, got "
                              f"{self.harm!r}", key=f"{where}.harm")
        for name in ("eta", "nu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise RecipeError(f"{where}.{name} must be a number >= 0, got {value!r}",
                                  key=f"{where}.{name}")
        if self.stage == "task" and self.method in TARGET_METHODS \
                and not self.target:
            raise RecipeError(f"{where}: the task stage needs a target set (`target:` in a "
                              "recipe, --target-set on the command line)", key=where)

    @property
    def resolved_function(self) -> str:
        return self.function or DEFAULT_FUNCTION[self.stage]

    @property
    def resolved_quality(self) -> QualityOptions:
        """The quality prior this stage runs with: its own settings, except that a method
        in PRIOR_OFF_BY_DEFAULT left at the defaults runs without the prior."""
        if self.method in PRIOR_OFF_BY_DEFAULT and self.quality == QualityOptions():
            return QualityOptions.off()
        return self.quality


@dataclass
class InputSpec:
    """A file to ingest before selecting (skipped when its content was ingested before)."""

    path: str
    dataset: str | None = None        # default: the recipe's dataset
    append: bool = True


@dataclass
class ExportSpec:
    format: str = "jsonl"             # also export_selection's and `curator export`'s
    out: str = "exports"              # one folder per selection below this

    def validate(self, where: str = "export") -> None:
        if self.format not in EXPORT_FORMATS:
            raise RecipeError(f"{where}.format must be one of {', '.join(EXPORT_FORMATS)}, "
                              f"got {self.format!r}", key=f"{where}.format")


@dataclass
class Recipe:
    dataset: str
    model: str | None = None          # None: the embedded default
    inputs: list[InputSpec] = field(default_factory=list)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    stages: list[StageSpec] = field(default_factory=list)
    export: ExportSpec | None = field(default_factory=ExportSpec)

    def validate(self) -> Recipe:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise RecipeError("dataset: a dataset name is required", key="dataset")
        self.scoring.validate()
        if not self.stages:
            raise RecipeError("stages: give at least one stage", key="stages")
        names: set[str] = set()
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
            if stage.parent == "previous" and i == 0:
                raise RecipeError(f"stages[{i}].parent: 'previous' needs an earlier stage",
                                  key=f"stages[{i}].parent")
            if stage.name:
                if stage.name in names:
                    raise RecipeError(f"stages[{i}].name: {stage.name!r} is used twice",
                                      key=f"stages[{i}].name")
                names.add(stage.name)
        if self.export is not None:
            self.export.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainDefaults:
    """What ``curator.training.finetune.train`` and ``curator train`` default to. Said here, below
    torch, so the CLI reads them without importing the trainer; the trainer's signature
    reads them too (``TRAIN_DEFAULTS``)."""

    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 8
    max_length: int = 1024
    seed: int = 0
    gast_sampling: str = "batch"      # GAST: each layer samples its rows per batch (the paper)


@dataclass(frozen=True)
class EvalDefaults:
    """What ``curator.training.evaluate`` (``eval_loss``, ``row_losses``, ``exact_match``) and
    ``curator eval`` default to (see ``TrainDefaults``)."""

    batch_size: int = 16
    max_length: int = 1024
    max_new_tokens: int = 32          # exact match: tokens generated per prompt at most
    tokens: str = "answer"            # the loss over the answer's own tokens (EVAL_TOKENS)


TRAIN_DEFAULTS = TrainDefaults()
EVAL_DEFAULTS = EvalDefaults()


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters for ``curator.training.lora.train_lora`` (re-exported there); here, with the
    other configs, so ``curator train``'s options read its defaults without torch."""

    rank: int = 8
    alpha: float = 16.0
    # Module name suffixes; None: every linear layer in the blocks.
    target_modules: tuple[str, ...] | None = None
    dropout: float = 0.0
    # peft's init_lora_weights: True starts with lora_B = 0 (the adapter is a no-op at step 0).
    init_weights: bool = True

    def validate(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("LoRA rank must be >= 1, alpha > 0 and dropout in [0, 1)")
        if self.target_modules is not None and not [t for t in self.target_modules if t]:
            raise ValueError("LoRA target modules: give at least one module name")


def default_of(cls: type, name: str) -> Any:
    """The default dataclass ``cls`` declares for field ``name``: the CLI's options and the
    app take their defaults from here, so each default is said once, in this module."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}", key=where)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (known: {', '.join(sorted(names))})", key=where)
    return cls(**data)


def recipe_from_dict(data: Any, base_dir: str | Path | None = None) -> Recipe:
    """A validated recipe from a mapping. With ``base_dir`` (the recipe file's folder),
    relative paths written in the recipe (inputs, export.out, a model given as a local
    folder) are taken relative to it, so a recipe runs the same from any working
    directory; defaults it does not write (export.out: exports) stay relative to the
    working directory."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping with at least 'dataset' and 'stages'")
    data = dict(data)
    if "dataset" not in data:
        raise RecipeError("dataset: a dataset name is required", key="dataset")
    inputs = data.pop("inputs", None) or []
    if not isinstance(inputs, list):
        raise RecipeError("inputs: expected a list", key="inputs")
    stages = data.pop("stages", None) or []
    if not isinstance(stages, list):
        raise RecipeError("stages: expected a list", key="stages")
    scoring = data.pop("scoring", None) or {}
    export = data.pop("export", {})
    recipe = _build(Recipe, data, "recipe")
    recipe.inputs = [_build(InputSpec, {"path": i} if isinstance(i, str) else i,
                            f"inputs[{n}]") for n, i in enumerate(inputs)]
    recipe.stages = [_build(StageSpec, s, f"stages[{n}]") for n, s in enumerate(stages)]
    recipe.scoring = _build(ScoringOptions, scoring, "scoring")
    recipe.export = None if export is None else _build(ExportSpec, export, "export")
    if base_dir is not None:
        _resolve_paths(recipe, Path(base_dir), export_given=isinstance(export, dict)
                       and "out" in export)
    return recipe.validate()


def _resolve_paths(recipe: Recipe, base: Path, export_given: bool) -> None:
    def under(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    for item in recipe.inputs:
        if isinstance(item.path, str) and item.path:
            item.path = under(item.path)
    if export_given and recipe.export is not None and isinstance(recipe.export.out, str):
        recipe.export.out = under(recipe.export.out)
    # A model is a hub-style name or a local folder; only a folder that exists beside the
    # recipe is rewritten (a name like "org/model" must stay a name).
    if isinstance(recipe.model, str) and recipe.model and not Path(recipe.model).is_absolute() \
            and (base / recipe.model).is_dir():
        recipe.model = str(base / recipe.model)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (.yaml, .yml or .json); relative paths in it are
    relative to the file's folder."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"no such recipe file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise several types; the message is what matters
        raise RecipeError(f"{path} is not valid {path.suffix.lstrip('.') or 'YAML'}: "
                          f"{_one_line(exc)}") from exc
    return recipe_from_dict(data, base_dir=path.resolve().parent)


def _one_line(exc: Exception) -> str:
    """A parser's error in one line: yaml's message spans several (the context, the
    offending line and a caret under it), so say its problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    if getattr(exc, "problem", None) and mark is not None:
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config."""
    import hashlib

    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
