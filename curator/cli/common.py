"""What every `curator` command shares: the group, the store and dataset options, and one
error type printed as one line with exit code 1 (the library's expected errors become it)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from curator.config import EVAL_DEFAULTS
from curator.store import Store, StoreError
from curator.vocabulary import EVAL_TOKENS


class CuratorError(click.ClickException):
    """Printed as `error: <message>` with exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors(func: Callable) -> Callable:
    """Turn the library's expected errors into one line and exit 1 (no traceback)."""
    from curator.ingestion.ingest import IngestError
    from curator.ingestion.readers import InputError
    from curator.models import ModelLoadError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (StoreError, IngestError, InputError, ModelLoadError, ValueError) as exc:
            raise CuratorError(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def store_option(func: Callable) -> Callable:
    return click.option(
        "--store", "store_path", type=click.Path(file_okay=False, path_type=Path),
        envvar="CURATOR_STORE", default="curator-store", show_default=True,
        help="Store folder (env CURATOR_STORE).")(func)


def dataset_option(func: Callable) -> Callable:
    return click.option("--dataset", "-d", required=True, help="Dataset name.")(func)


def eval_tokens_option(func: Callable) -> Callable:
    return click.option(
        "--eval-tokens", type=click.Choice(EVAL_TOKENS), default=EVAL_DEFAULTS.tokens,
        show_default=True,
        help="Loss over the answer's own tokens ('answer') or the whole response with the "
             "chat template's end-of-turn tokens ('response', the loss training minimises)."
    )(func)


def open_store(path: Path) -> Store:
    """An existing store (NotFound with a hint to `curator init` when there is none)."""
    return Store(path, create=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="curator")
def main() -> None:
    """curator: continual fine-tuning data curation.

    Keep every version of a fine-tuning data set, score samples with the model you will
    fine-tune, pick a subset per stage, and export it with its parameter mask.
    """
    from curator.env import EnvError, check_all

    if {"-h", "--help"} & set(sys.argv[1:]):
        return  # help needs no environment
    try:
        check_all()  # every variable curator reads, once: a bad one stops here, in one line
    except EnvError as exc:
        raise CuratorError(str(exc)) from exc
