"""The quality prior on the command line: ``curator score quality`` and the ``--quality-*``
options of ``select`` (their defaults are ``config.QualityOptions``'s, said once there)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from curator.cli.common import CuratorError, dataset_option, open_store, store_option, user_errors
from curator.cli.options import engine_options, model_loader, scoring_config, scoring_options
from curator.config import QualityOptions, default_of
from curator.vocabulary import QUALITY_SIGNALS


def _quality(name: str) -> Any:
    return default_of(QualityOptions, name)


def quality_options(func: Callable) -> Callable:
    """The quality prior's options, passed on as one ``quality`` mapping."""
    opts = [
        click.option("--quality-signal", type=click.Choice(QUALITY_SIGNALS),
                     default=_quality("signal"), show_default=True,
                     help="Quality prior: the model's own-loss signal that judges a row, as a "
                          "z-score among its most similar pool rows (ifd: answer loss with / "
                          "without the prompt; loss; stop: end-of-turn NLL; combined: their "
                          "mean)."),
        click.option("--quality-drop", default=_quality("drop"), show_default=True,
                     metavar="auto|N%|off",
                     help="Quality prior: leave out rows before selecting. auto: z above "
                          "0.5 or IFD >= 1 (at most 30% of the pool); N%: the worst N%."),
        click.option("--quality-weight", type=float, default=_quality("weight"),
                     show_default=True,
                     help="Quality prior: weight of the modular term added to the objective "
                          "(greedy methods; RDS+ adds it to its similarities); 0: off."),
    ]
    for opt in reversed(opts):
        func = opt(func)

    @functools.wraps(func)
    def wrapper(*args, quality_signal, quality_drop, quality_weight, **kwargs):
        kwargs["quality"] = {"signal": quality_signal, "drop": quality_drop,
                             "weight": quality_weight}
        return func(*args, **kwargs)

    return wrapper


def register(score: click.Group) -> None:
    """Add ``score quality`` to the ``score`` group (commands.py holds the group)."""

    @score.command("quality")
    @dataset_option
    @store_option
    @click.option("--version", "-v", "version", default=None, help="Version (default: latest).")
    @scoring_options
    @engine_options
    @user_errors
    def score_quality(dataset: str, store_path: Path, version: str | None, model: str | None,
                      k: int, hubs: str, distance: str, batch_size: int, max_length: int,
                      dtype: str, trust_remote_code: bool, engine: dict[str, Any]) -> None:
        """The quality prior's per-row signals: the answer's loss given its prompt, IFD
        (that loss over the loss after an empty prompt) and the end-of-turn token's NLL.

        Only rows not already stored for this model are computed. Prints how many rows
        each signal puts at the top of its own neighbourhood.
        """
        from curator.scoring.engine import engine_for
        from curator.scoring.jobs import ensure_quality
        from curator.scoring.quality import QualityConfig
        from curator.store.datasets import load_samples, resolve_version

        options = scoring_config(k, distance, batch_size, max_length, dtype, engine=engine)
        store = open_store(store_path)
        v = resolve_version(store, dataset, version)
        pool = load_samples(store, dataset, v)
        if not pool:
            raise CuratorError(f"{dataset} v{v} has no samples")
        lm = model_loader(model, dtype, trust_remote_code)()
        rows, computed = ensure_quality(store, lm, pool, config=QualityConfig(max_length),
                                        batch_size=batch_size, progress=True,
                                        engine=engine_for(options))
        valid = rows.valid
        ifd = rows.ifd[valid]
        click.echo(f"quality: {len(pool)} rows of {dataset} v{v} ({computed} computed, "
                   f"{len(pool) - computed} stored); {int(valid.sum())} scored, "
                   f"{int((ifd >= 1).sum())} with IFD >= 1 (the prompt does not make the "
                   f"answer likelier)")
        bad = [r for r in rows.reason if r]
        if bad:
            click.echo(f"  {len(bad)} not scored: {bad[0]}" + (" ..." if len(bad) > 1 else ""))
