"""What the scoring commands (``score utility``, ``score quality``, ``select``) share: their
option bundles, the ``ScoringOptions`` they build, config errors in the flags' words, and
the lazily loaded model.

Every option that sets a config field takes its default from the config dataclass
(``config.default_of``), so each default is said once, in ``curator/config.py``, and
``--help`` shows it; every value is checked once, by the config's ``validate``.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from curator.cli.common import CuratorError
from curator.config import GradientOptions, RecipeError, ScoringOptions, default_of
from curator.vocabulary import DISTANCES, ENGINES, GRADIENT_NORMALIZE, MASK_RANKS


def _scoring(name: str) -> Any:
    return default_of(ScoringOptions, name)


def _gradient(name: str) -> Any:
    return default_of(GradientOptions, name)


def scoring_options(func: Callable) -> Callable:
    """Options shared by commands that score with a model."""
    opts = [
        click.option("--model", default=None,
                     help="Hugging Face causal LM name or path (default: embedded SmolLM2)."),
        click.option("--k", "k", type=int, default=_scoring("k"), show_default=True,
                     help="Neighbours per sample in the candidate-pair graph."),
        click.option("--hubs", default=_scoring("hubs"), show_default=True, metavar="N|auto",
                     help="Also score the N examples that helped their neighbours most "
                          "against every target (better small-budget selections; 0: off). "
                          "auto: k of them when a selection keeps at most 20% of its pool "
                          "(`score utility` knows no budget and scores none)."),
        click.option("--distance", type=click.Choice(DISTANCES), default=_scoring("distance"),
                     show_default=True, help="nll: mean NLL of the answer tokens; prob-l2: the paper's distance."),
        click.option("--batch-size", type=int, default=_scoring("batch_size"),
                     show_default=True),
        click.option("--max-length", type=int, default=_scoring("max_length"),
                     show_default=True, help="Tokens per scored sequence (capped by the model)."),
        click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32", "fp16"]),
                     default=_scoring("dtype"), show_default=True),
        click.option("--trust-remote-code", is_flag=True,
                     help="Allow model code from the model's repository (off by default)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def engine_options(func: Callable) -> Callable:
    """Where scoring runs (config.ScoringOptions.engine and friends); passed on as one
    ``engine`` mapping and checked by ``ScoringOptions.validate`` with the other options
    (no click.Choice here: an unknown engine gets the recipe's message)."""
    opts = [
        click.option("--engine", default=_scoring("engine"), show_default=True,
                     metavar=f"[{'|'.join(ENGINES)}]",
                     help="Score in this process, or on a Ray actor pool (one model per "
                          "actor; needs pip install 'curator[ray]'). The store is written "
                          "by this process either way."),
        click.option("--workers", type=int, default=_scoring("workers"),
                     help="Ray: actors (default: one per GPU, else the cluster's CPUs / "
                          "--threads); also the CPUs of a local cluster."),
        click.option("--threads", type=int, default=_scoring("threads"), show_default=True,
                     help="Ray: torch threads per CPU actor."),
        click.option("--ray-address", default=_scoring("ray_address"), envvar="RAY_ADDRESS",
                     help="Ray: a running cluster to join (env RAY_ADDRESS; default: start "
                          "a local one, shut down at the end)."),
    ]
    for opt in reversed(opts):
        func = opt(func)

    @functools.wraps(func)
    def wrapper(*args, engine, workers, threads, ray_address, **kwargs):
        kwargs["engine"] = {"engine": engine, "workers": workers, "threads": threads,
                            "ray_address": ray_address}
        try:
            return func(*args, **kwargs)
        finally:
            engines = sys.modules.get("curator.scoring.engine")  # imported if it scored
            if engines is not None:
                engines.close_shared()  # the actors, and a local cluster this command started

    return wrapper


def gradient_options(func: Callable) -> Callable:
    """DualSFT's direction, prior and mask options (config.GradientOptions); their values
    are passed on as one ``gradient`` mapping."""
    opts = [
        click.option("--warmup-steps", type=int, default=_gradient("warmup_steps"),
                     show_default=True,
                     help="DualSFT: AdamW warm-up steps on a 5% slice of the pool before "
                          "scoring (as the reference); they make the KL prior to the frozen "
                          "model (v_prior) non-zero; 0 skips the warm-up and the prior."),
        click.option("--grad-eta", type=float, default=_gradient("eta"), show_default=True,
                     help="DualSFT: learning rate the update direction is built for (and the "
                          "warm-up's)."),
        click.option("--lambda-new", type=float, default=_gradient("lambda_new"),
                     show_default=True,
                     help="DualSFT: weight of the target (or held-out) gradient."),
        click.option("--lambda-prior", type=float, default=_gradient("lambda_prior"),
                     show_default=True, help="DualSFT: weight of the KL prior gradient."),
        click.option("--tau", type=float, default=_gradient("tau"), show_default=True,
                     help="DualSFT: temperature of the KL self-distillation."),
        click.option("--mask-rank", type=click.Choice(MASK_RANKS),
                     default=_gradient("mask_rank"), show_default=True,
                     help="DualSFT: rank parameters by signed importance (predicted loss "
                          "decrease, the reference's rule) or by its absolute value."),
        click.option("--mask-spread", type=float, default=_gradient("mask_spread"),
                     show_default=True,
                     help="DualSFT: share of the mask spread evenly over layers and module "
                          "kinds (0: plain top-k, the reference's default)."),
        click.option("--grad-normalize", type=click.Choice(GRADIENT_NORMALIZE),
                     default=_gradient("normalize"), show_default=True,
                     help="DualSFT: score samples over unit-norm gradients, <u, g_n> / |g_n| "
                          "('unit', as LESS), or as they are ('none', the reference)."),
    ]
    for opt in reversed(opts):
        func = opt(func)

    @functools.wraps(func)
    def wrapper(*args, warmup_steps, grad_eta, lambda_new, lambda_prior, tau, mask_rank,
                mask_spread, grad_normalize, **kwargs):
        kwargs["gradient"] = {"warmup_steps": warmup_steps, "eta": grad_eta,
                              "lambda_new": lambda_new, "lambda_prior": lambda_prior,
                              "tau": tau, "mask_rank": mask_rank, "mask_spread": mask_spread,
                              "normalize": grad_normalize}
        return func(*args, **kwargs)

    return wrapper


# Config keys whose flag is not the key's own name (the rest: option.lambda_new ->
# --lambda-new, option.quality.drop -> --quality-drop).
_FLAGS = {"gradient.eta": "grad-eta", "gradient.normalize": "grad-normalize",
          "target": "target-set"}


def _flag(match: re.Match) -> str:
    key = match.group(1)
    if key in _FLAGS:
        return "--" + _FLAGS[key]
    if key.startswith("quality."):
        key = "quality_" + key.removeprefix("quality.")
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def flag_error(exc: RecipeError) -> CuratorError:
    """A config error about values validated with ``where="option"``, in the words of the
    flags that set them: the recipe's message, with the option's flag for its key."""
    text = str(exc).replace("option.gradient: these settings", "the DualSFT options")
    text = re.sub(r"\boption\.([\w.]*\w)", _flag, text)
    return CuratorError(text.replace("option: ", ""))


def scoring_config(k: int, distance: str, batch_size: int, max_length: int, dtype: str,
                   dense: bool = False, hubs: int | str = 0,
                   engine: dict[str, Any] | None = None, **more: Any) -> ScoringOptions:
    """The ``ScoringOptions`` the flags say (``more``: other fields, as ``expand``),
    validated once; a missing Ray fails here, before the model loads."""
    from curator.scoring.engine import engine_for

    if isinstance(hubs, str) and hubs != "auto":
        try:
            hubs = int(hubs)
        except ValueError:
            pass  # not a number: validate names the flag
    options = ScoringOptions(k=k, distance=distance, batch_size=batch_size,
                             max_length=max_length, dense=dense, dtype=dtype, hubs=hubs,
                             **(engine or {}), **more)
    try:
        options.validate("option")
    except RecipeError as exc:
        raise flag_error(exc) from exc
    engine_for(options)
    return options


def model_loader(model: str | None, dtype: str, trust_remote_code: bool, echo: bool = True):
    """A function that loads the model once, on first use (random/full need none)."""
    from curator.pipeline import LazyModel

    return LazyModel(model, dtype=dtype, trust_remote_code=trust_remote_code,
                     echo=functools.partial(click.echo, err=True) if echo else None)
