"""`curator init, ingest, versions, diff, show, trash`: the store's data sets and versions."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from curator.cli.common import (
    CuratorError,
    dataset_option,
    main,
    open_store,
    store_option,
    user_errors,
)
from curator.ingestion.readers import DEFAULT_SPLIT
from curator.store import Store


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
@click.option("--split", default=DEFAULT_SPLIT, show_default=True,
              help="Split to read from a saved or hub Hugging Face dataset.")
@click.option("--message", "-m", help="A note stored with the version.")
@click.option("--hub", is_flag=True,
              help="SOURCE is a Hugging Face hub data set name (same as hub:NAME).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def ingest(source: str, dataset: str, store_path: Path, append: bool, prompt_field: str | None,
           response_field: str | None, messages_field: str | None, split: str,
           message: str | None, hub: bool, quiet: bool) -> None:
    """Ingest SOURCE as a new version of a dataset.

    SOURCE is a .jsonl/.json/.csv/.tsv/.parquet file, a folder of them, a saved Hugging Face
    dataset, or a hub data set written hub:NAME (or NAME with --hub; where the hub is
    reachable). Bad rows go to quarantine with their line and reason; nothing is dropped
    silently.
    """
    from tqdm import tqdm

    from curator.ingestion.ingest import ingest as run_ingest
    from curator.ingestion.schemas import FieldMap

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
                             split=split, message=message, hub=hub, progress=progress)
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
    from curator.store.datasets import diff_versions, get_samples, get_version

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


def _page_note(shown: int, offset: int, total: int) -> str:
    """" (showing 11-20 of 57)" when the page is not the whole list."""
    if shown == total:
        return ""
    if shown == 0:
        return f" (none shown at offset {offset})"
    return f" (showing {offset + 1}-{offset + shown} of {total})"


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
    from curator.store import datasets as ds

    store = open_store(store_path)
    info = ds.get_version(store, dataset, version)
    found = f" matching {search!r}" if search else ""
    if quarantine:
        rows = ds.quarantine_rows(store, dataset, info.version, limit=limit, offset=offset,
                                  search=search)
        n = ds.count_quarantine(store, dataset, info.version, search) if search \
            else info.n_quarantined
        click.echo(f"{dataset} v{info.version}: {n} quarantined rows{found}"
                   + _page_note(len(rows), offset, n))
        for r in rows:
            click.echo(f"  {Path(r['source_file']).name}:{r['line']}: {r['reason']}: "
                       f"{_one_line(r['raw'] or '', 60)}")
        return
    samples = ds.load_samples(store, dataset, info.version, limit=limit, offset=offset,
                              search=search)
    n = ds.count_samples(store, dataset, info.version, search) if search else info.n_members
    click.echo(f"{dataset} v{info.version}: {n} samples{found}"
               + _page_note(len(samples), offset, n))
    for s in samples:
        meta = " ".join(f"{k}={v}" for k, v in s.metadata.items())
        click.echo(f"- {s.sample_id} {meta}".rstrip())
        click.echo(f"    prompt:   {_one_line(s.prompt, 100)}")
        click.echo(f"    response: {_one_line(s.response, 100)}")



@main.group()
def trash() -> None:
    """Set samples aside: later selections leave trashed samples out (restorable)."""


@trash.command("add")
@click.argument("sample_ids", nargs=-1, required=True)
@dataset_option
@store_option
@click.option("--reason", "-r", default=None, help="Why (shown in the app and in `list`).")
@user_errors
def trash_add(sample_ids: tuple[str, ...], dataset: str, store_path: Path,
              reason: str | None) -> None:
    """Put samples of a dataset in its trash."""
    from curator.store.trash import trash_count, trash_samples

    store = open_store(store_path)
    added = trash_samples(store, dataset, list(sample_ids), reason)
    click.echo(f"trashed {added} sample(s) of {dataset} ({len(sample_ids) - added} already "
               f"there); {trash_count(store, dataset)} in its trash")


@trash.command("restore")
@click.argument("sample_ids", nargs=-1)
@dataset_option
@store_option
@click.option("--all", "everything", is_flag=True, help="Restore everything in the trash.")
@user_errors
def trash_restore(sample_ids: tuple[str, ...], dataset: str, store_path: Path,
                  everything: bool) -> None:
    """Take samples out of a dataset's trash."""
    from curator.store.trash import restore_samples, trash_count

    if bool(sample_ids) == everything:
        raise CuratorError("give sample ids or --all (not both)")
    store = open_store(store_path)
    n = restore_samples(store, dataset, None if everything else list(sample_ids))
    click.echo(f"restored {n} sample(s) of {dataset}; {trash_count(store, dataset)} left in "
               "its trash")


@trash.command("list")
@dataset_option
@store_option
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0, show_default=True)
@user_errors
def trash_list(dataset: str, store_path: Path, limit: int, offset: int) -> None:
    """List a dataset's trash, newest first."""
    from curator.store.datasets import require_dataset
    from curator.store.trash import trash_count, trash_page

    store = open_store(store_path)
    require_dataset(store, dataset)
    total = trash_count(store, dataset)
    click.echo(f"{total} sample(s) in the trash of {dataset}")
    for r in trash_page(store, dataset, limit, offset):
        click.echo(f"{r['sample_id']}  {r['trashed_at']:%Y-%m-%d %H:%M}  "
                   f"{r['reason'] or '-'}  {_one_line(r['prompt'], 60)}")
