"""The `curator` command: thin shells over the library. Each command opens the store, makes
one library call and prints the result; library errors become a one-line message and exit 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from curator.store import Store, StoreError

EXIT_USAGE = 2


class CuratorError(click.ClickException):
    """Printed as `error: <message>` with exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors(func: Callable) -> Callable:
    """Turn the library's expected errors into one line and exit 1 (no traceback)."""
    from curator.ingest import IngestError
    from curator.models import ModelLoadError
    from curator.readers import InputError

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


def open_store(path: Path, must_exist: bool = True) -> Store:
    store = Store(path, create=not must_exist)
    return store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="curator")
def main() -> None:
    """curator: continual fine-tuning data curation.

    Keep every version of a fine-tuning data set, score samples with the model you will
    fine-tune, pick a subset per stage, and export it with its parameter mask.
    """


@main.command()
@store_option
@user_errors
def init(store_path: Path) -> None:
    """Create an empty store (a folder with curator.duckdb and artifacts/)."""
    store = Store(store_path)
    existed = store.exists
    store.init()
    state = "exists" if existed else "created"
    click.echo(f"store {state}: {store.path.resolve()} (schema version {store.schema_version()})")


@main.command()
@click.argument("source")
@dataset_option
@store_option
@click.option("--append", is_flag=True,
              help="New version = previous version + this input (default: a snapshot).")
@click.option("--prompt-field", help="Field holding the prompt (overrides schema detection).")
@click.option("--response-field", help="Field holding the response.")
@click.option("--messages-field", help="Field holding chat turns (OpenAI or ShareGPT style).")
@click.option("--split", default="train", show_default=True,
              help="Split to read from a saved or hub Hugging Face dataset.")
@click.option("--message", "-m", help="A note stored with the version.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def ingest(source: str, dataset: str, store_path: Path, append: bool, prompt_field: str | None,
           response_field: str | None, messages_field: str | None, split: str,
           message: str | None, quiet: bool) -> None:
    """Ingest SOURCE as a new version of a dataset.

    SOURCE is a .jsonl/.json/.csv/.tsv/.parquet file, a folder of them, a saved Hugging Face
    dataset, or a hub name (where the hub is reachable). Bad rows go to quarantine with their
    line and reason; nothing is dropped silently.
    """
    from tqdm import tqdm

    from curator.ingest import ingest as run_ingest
    from curator.schemas import FieldMap

    fields = None
    if prompt_field or response_field or messages_field:
        fields = FieldMap(prompt_field, response_field, messages_field)
    bar = tqdm(desc="ingest", unit=" rows", disable=quiet or None, file=sys.stderr)
    last = [0]

    def progress(n: int) -> None:
        bar.update(n - last[0])
        last[0] = n

    try:
        summary = run_ingest(Store(store_path), source, dataset, append=append, fields=fields,
                             split=split, message=message, progress=progress)
    finally:
        bar.close()
    for line in summary.lines():
        click.echo(line)


@main.command()
@dataset_option
@store_option
@user_errors
def versions(dataset: str, store_path: Path) -> None:
    """List the versions of a dataset with what each added, removed and quarantined."""
    from curator.store.datasets import list_versions

    rows = list_versions(open_store(store_path), dataset)
    click.echo(f"{'version':>7} {'parent':>6} {'mode':<8} {'members':>8} {'added':>7} "
               f"{'removed':>7} {'dups':>5} {'quar':>5}  created              source")
    for v in rows:
        click.echo(f"{v.version:>7} {v.parent or '-':>6} {v.mode:<8} {v.n_members:>8} "
                   f"{v.n_added:>7} {v.n_removed:>7} {v.n_duplicates:>5} {v.n_quarantined:>5}"
                   f"  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.source}")


@main.command()
@click.argument("old", required=False)
@click.argument("new", required=False)
@dataset_option
@store_option
@click.option("--limit", default=10, show_default=True, help="Sample ids to list per side.")
@user_errors
def diff(old: str | None, new: str | None, dataset: str, store_path: Path, limit: int) -> None:
    """What changed between versions OLD and NEW (default: the latest against its parent)."""
    from curator.store.datasets import diff_versions, get_version, get_samples

    store = open_store(store_path)
    if old is None and new is None:
        latest = get_version(store, dataset)
        if latest.parent is None:
            raise CuratorError(f"dataset {dataset!r} has one version; name two to compare")
        old, new = str(latest.parent), str(latest.version)
    elif new is None:
        new = "latest"
    d = diff_versions(store, dataset, old, new, limit=limit)
    click.echo(f"{dataset}: v{d.old} -> v{d.new}: added {d.n_added}, removed {d.n_removed}, "
               f"unchanged {d.n_unchanged}")
    shown = get_samples(store, d.added + d.removed)
    for sign, ids in (("+", d.added), ("-", d.removed)):
        for sid in ids:
            click.echo(f"  {sign} {sid}  {_one_line(shown[sid].prompt, 70)}")


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@main.command()
@dataset_option
@store_option
@click.option("--version", "-v", "version", default=None, help="Version (default: latest).")
@click.option("--limit", default=10, show_default=True)
@click.option("--offset", default=0, show_default=True)
@click.option("--search", help="Only samples whose prompt or response contains this text.")
@click.option("--quarantine", is_flag=True, help="Show the version's quarantined rows instead.")
@user_errors
def show(dataset: str, store_path: Path, version: str | None, limit: int, offset: int,
         search: str | None, quarantine: bool) -> None:
    """Show samples (or quarantined rows) of a dataset version."""
    from curator.store.datasets import get_version, load_samples, quarantine_rows

    store = open_store(store_path)
    info = get_version(store, dataset, version)
    if quarantine:
        rows = quarantine_rows(store, dataset, info.version, limit=limit)
        click.echo(f"{dataset} v{info.version}: {info.n_quarantined} quarantined rows")
        for r in rows:
            click.echo(f"  {Path(r['source_file']).name}:{r['line']}: {r['reason']}: "
                       f"{_one_line(r['raw'] or '', 60)}")
        return
    samples = load_samples(store, dataset, info.version, limit=limit, offset=offset,
                           search=search)
    click.echo(f"{dataset} v{info.version}: {info.n_members} samples"
               + (f" (showing {len(samples)} matching {search!r})" if search else ""))
    for s in samples:
        meta = " ".join(f"{k}={v}" for k, v in s.metadata.items())
        click.echo(f"- {s.sample_id} {meta}".rstrip())
        click.echo(f"    prompt:   {_one_line(s.prompt, 100)}")
        click.echo(f"    response: {_one_line(s.response, 100)}")


@main.command()
@store_option
@click.option("--model", default=None, help="Model to load (default: the embedded SmolLM2).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Sample data folder (default: the project's sample_data/).")
@user_errors
def demo(store_path: Path, model: str | None, data_dir: Path | None) -> None:
    """Run the main job on the project's sample data with the embedded default model."""
    from curator.demo import run_demo

    run_demo(Store(store_path), model=model, data_dir=data_dir, echo=click.echo)


@main.command()
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", default=8501, show_default=True, type=int)
@click.option("--headless/--browser", default=True, show_default=True,
              help="Do not open a browser window.")
def app(store_path: Path, host: str, port: int, headless: bool) -> None:
    """Start the Streamlit app on the store (listens on 127.0.0.1 unless --host says)."""
    import os
    import subprocess

    app_file = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"
    if not app_file.exists():
        raise CuratorError(f"app not found at {app_file} (run from a source checkout)")
    env = dict(os.environ, CURATOR_STORE=str(store_path.resolve()))
    click.echo(f"curator app on http://{host}:{port} (store {store_path.resolve()})")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file),
           "--server.address", host, "--server.port", str(port),
           "--server.headless", str(headless).lower(), "--browser.gatherUsageStats", "false"]
    sys.exit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    main()
