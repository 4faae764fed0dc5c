"""Shared plumbing for the pages: the store, cached reads, busy-store handling, paging.

Pages stay thin: they read through the store's functions (``curator.store.browse_*`` and the
other store modules) via ``read(function, ...)`` (cached for a few seconds, so reruns while
people click are cheap), and wrap their body in ``guard()`` so a store that a scheduled job
holds shows a message, not a traceback.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import duckdb
import streamlit as st

from curator import env
from curator.app import explain as _explain
from curator.outputs import mask_files
from curator.outputs.subsets import ExportError
from curator.store import Store, StoreError, browse_overview, selection_rows
from curator.store import trash as store_trash

CACHE_TTL = 10  # seconds: a scheduled job's new data shows up after this at the latest

P = ParamSpec("P")
R = TypeVar("R")


def store_path() -> Path:
    return Path(os.environ.get("CURATOR_STORE", "curator-store"))


def lock_timeout() -> float:
    """A page should not hang for a minute behind a writer: wait a few seconds, then say so."""
    return env.app_lock_timeout()  # EnvError naming the variable: one line (guard)


@st.cache_resource(show_spinner=False)
def _store(path: str, timeout: float) -> Store:
    # A Store holds no open connection between calls (one per operation, per thread),
    # so sharing the object across sessions is safe.
    return Store(path, lock_timeout=timeout, create=True)


def get_store() -> Store:
    return _store(str(store_path().resolve()), lock_timeout())


def reader_name(fn: Callable[..., Any]) -> str:
    """``module.function`` of a store reader: a function defined at the top of a module in
    ``curator.store`` (where all SQL lives), which the name finds again. Anything else (a
    string, a lambda, a function of another layer) is a TypeError: the name is the reader's
    part of the cache key, so two readers must never share one."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", "")
    if not (inspect.isfunction(fn) and module.startswith("curator.store.")
            and getattr(sys.modules.get(module), name, None) is fn):
        raise TypeError(f"read() takes a store reader function (curator.store.*), "
                        f"not {fn!r}")
    return f"{module}.{name}"


# ``_reader`` is left out of the cache key (Streamlit skips arguments named with a leading
# underscore); ``name`` stands for it.
@st.cache_data(ttl=CACHE_TTL, show_spinner=False, max_entries=512)
def _read(path: str, timeout: float, name: str, _reader: Callable[..., Any], args: tuple,
          kwargs: tuple) -> Any:
    return _reader(_store(path, timeout), *args, **dict(kwargs))


def read(reader: Callable[Concatenate[Store, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``reader(store, *args, **kwargs)`` for a store reader such as
    ``browse_versions.sample_page``, cached for ``CACHE_TTL`` s per arguments."""
    name = reader_name(reader)
    return _read(str(store_path().resolve()), lock_timeout(), name, reader, args,
                 tuple(sorted(kwargs.items())))


def clear_cache() -> None:
    _read.clear()
    _kernels.clear()


# A mask file never changes under its recorded checksum: its heatmap (which reads and
# checks the whole file) is kept an hour per (selection, checksum), not 10 s.
@st.cache_data(ttl=3600, show_spinner=False, max_entries=32)
def _mask_cells(path: str, timeout: float, selection_id: str, sha256: str) -> Any:
    store = _store(path, timeout)
    rec = selection_rows.get_mask_record(store, selection_id)
    if rec is None:
        return []
    return mask_files.mask_heatmap(Path(store.artifacts) / rec["path"], rec["sha256"])


def mask_heatmap(selection_id: str, sha256: str) -> Any:
    """``mask_files.mask_heatmap`` of the selection's mask file, cached per mask checksum."""
    return _mask_cells(str(store_path().resolve()), lock_timeout(), selection_id, sha256)


# A selection never changes, but its kernels read every pair stored among its rows, which a
# later stage may add to: kept a minute, since building them reads every pair in the pool.
@st.cache_data(ttl=60, show_spinner=False, max_entries=8)
def _kernels(path: str, timeout: float, selection_id: str) -> Any:
    return _explain.selection_kernels(_store(path, timeout), selection_id)


def explain_sample(selection_id: str, sample_id: str, member: dict | None) -> dict | None:
    """Why ``sample_id`` is (or is not) in the selection, from the selection's own kernels
    (None when it was not made from pairwise utilities). Kernels are cached per selection."""
    kernels = _kernels(str(store_path().resolve()), lock_timeout(), selection_id)
    if kernels is None:
        return None
    return {"kernels": kernels,
            **_explain.explain_in_model_terms(get_store(), selection_id, kernels, sample_id,
                                              member)}


# -- deep links: a page's state in the URL ---------------------------------------------------

def url_params(page: str, names: tuple[str, ...],
               lists: tuple[str, ...] = ()) -> dict[str, Any]:
    """The URL's values of ``names`` to apply to the page's widgets on this run: all of them
    when the URL differs from what this page last wrote there (a reload, a shared link, a
    link typed by hand), else nothing (the widgets already hold them). A name in ``lists``
    may repeat: its value is the list of them."""
    current: dict[str, Any] = {
        n: (list(st.query_params.get_all(n)) if n in lists else st.query_params[n])
        for n in names if n in st.query_params}
    if st.session_state.get(f"_url::{page}") == current:
        return {}
    return current


def write_url(page: str, values: dict[str, Any]) -> None:
    """Put the page's state in the URL (so a reload keeps the view and it can be shared);
    a list value repeats its parameter."""
    clean = {k: ([str(x) for x in v] if isinstance(v, list) else str(v))
             for k, v in values.items() if v not in (None, "", [])}
    now = {k: (list(st.query_params.get_all(k)) if isinstance(clean.get(k), list)
               else st.query_params[k]) for k in st.query_params}
    if now != clean:
        st.query_params.from_dict(clean)
    st.session_state[f"_url::{page}"] = clean


def url_page(raw: str, key: str) -> None:
    """A link's page number becomes pager ``key``'s page (the pager keeps it in range)."""
    try:
        st.session_state[f"{key}_page"] = max(1, int(raw))
    except ValueError:
        st.warning(f"The link asks for page {raw!r}, which is not a number; showing the "
                   "first page instead.", icon=":material/link_off:")


def url_choice(params: dict[str, str], name: str, key: str, options: list[Any],
               what: str, convert: Callable[[str], Any] = str) -> None:
    """Set widget ``key`` from URL parameter ``name`` when it is one of ``options``; say so
    in one line when it is not (the widget keeps its default)."""
    if name not in params:
        return
    raw = params[name]
    try:
        value = convert(raw)
    except ValueError:
        value = None
    if value in options:
        st.session_state[key] = value
    else:
        shown = ", ".join(str(o) for o in options[:8]) + (" …" if len(options) > 8 else "")
        st.warning(f"The link asks for {what} {raw!r}, which is not there "
                   f"(choices: {shown}); showing the default instead.",
                   icon=":material/link_off:")


BUSY_ERRORS = (StoreError, duckdb.Error, OSError)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn a busy or unreadable store into a message on the page."""
    try:
        yield
    except env.EnvError as exc:
        st.error(str(exc))
    except BUSY_ERRORS as exc:
        st.warning(f"The store is busy or unreadable right now: {exc}\n\n"
                   "A scheduled job may be writing to it; reload in a moment.", icon=":material/hourglass_top:")
    except ExportError as exc:
        st.error(f"Export failed: {exc}")


def require_store() -> Store:
    """The store, or a how-to-create message (and stop) when it is missing or empty."""
    path = store_path()
    store = get_store()
    if not store.exists or read(browse_overview.is_empty):
        shown = str(path)
        st.info(
            f"There is no curator data at `{shown}` yet. Create a store and add data:\n\n"
            f"```\ncurator init --store {shown}\n"
            f"curator ingest data.jsonl --dataset mydata --store {shown}\n```\n"
            f"or build the sample store with every kind of result in it:\n\n"
            f"```\ncurator demo --store {shown}\n```\n"
            f"then reload this page (or start the app with `curator app --store PATH`).",
            icon=":material/info:")
        st.stop()
    return store


def page_state(key: str, default_size: int = 50) -> tuple[int, int]:
    """(limit, offset) the pager named ``key`` holds now (before it is drawn), so a page
    can read its rows and the match count in one query."""
    size = int(st.session_state.get(f"{key}_size", default_size))
    page = int(st.session_state.get(f"{key}_page", 1) or 1)
    return size, (page - 1) * size


def pager(total: int, key: str, sizes: tuple[int, ...] = (25, 50, 100)) -> tuple[int, int]:
    """A page-size choice and a page number; returns (limit, offset)."""
    left, mid, right = st.columns([1, 1, 3])
    size = left.selectbox("rows per page", sizes, index=1 if len(sizes) > 1 else 0,
                          key=f"{key}_size")
    pages = max(1, -(-total // size))
    page_key = f"{key}_page"
    if int(st.session_state.get(page_key, 1) or 1) > pages:
        st.session_state[page_key] = pages  # the filter shrank the result: stay in range
    page = mid.number_input(f"page (of {pages:,})", min_value=1, max_value=pages, value="min",
                            step=1, key=page_key)
    page = min(int(page or 1), pages)
    offset = (page - 1) * size
    right.caption(f"rows {min(total, offset + 1):,}–{min(total, offset + size):,} "
                  f"of {total:,}")
    return size, offset


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 sample``, ``2 samples`` (thousands separated)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def selection_label(sel: Any) -> str:
    return (f"{sel.selection_id} · {sel.stage} · {sel.method} · {sel.dataset} v{sel.version} "
            f"({sel.n_selected:,}/{sel.n_pool:,})")


def pick_selection(key: str, label: str = "selection", only: list[str] | None = None,
                   default: str | None = None) -> Any:
    """A selectbox over the store's selections; returns the chosen SelectionRecord."""
    sels = read(selection_rows.list_selections)
    if only is not None:
        sels = [s for s in sels if s.selection_id in only]
    if not sels:
        return None
    ids = [s.selection_id for s in sels]
    by_id = {s.selection_id: s for s in sels}
    index = ids.index(default) if default in ids else 0
    chosen = st.selectbox(label, ids, index=index, key=key,
                          format_func=lambda i: selection_label(by_id[i]))
    return by_id[chosen]


# -- the trash: controls shared by the pages that show one sample -------------------------

def trash_controls(dataset: str, sample_id: str, key: str) -> None:
    """A restore button for a trashed sample, else a reason box and a move-to-trash button
    (the outcome shows on the next run through ``trash_message``)."""
    if sample_id in read(store_trash.trashed_ids, dataset):
        st.button("Restore from the trash", key=f"{key}_restore", on_click=restore,
                  args=(dataset, [sample_id]))
        return
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    c1.text_input("reason (optional)", key=f"{key}_trash_reason",
                  placeholder=f"why later selections of {dataset} should leave it out")
    c2.button("Move to trash", key=f"{key}_trash", on_click=move_to_trash,
              args=(dataset, sample_id, f"{key}_trash_reason"))


def move_to_trash(dataset: str, sample_id: str, reason_key: str) -> None:
    """Button callback (runs before the page): trash one sample, say so, drop cached reads."""
    reason = st.session_state.get(reason_key) or None
    if _write(lambda store: store_trash.trash_samples(store, dataset, [sample_id], reason),
              lambda _n: f"{sample_id} is in the trash: later selections of {dataset} leave "
              "it out."):
        st.session_state[reason_key] = ""


def restore(dataset: str, sample_ids: list[str] | None) -> None:
    _write(lambda store: store_trash.restore_samples(store, dataset, sample_ids),
           lambda n: f"restored {n} sample(s) of {dataset}.")


def _write(action: Callable[[Store], int], message: Callable[[int], str]) -> bool:
    """Run a store write from a callback; the outcome is shown by the page that follows
    (a busy store or a refused id is a message there, never a traceback)."""
    try:
        n = action(get_store())
    except BUSY_ERRORS as exc:
        st.session_state["trash_msg"] = ("error", f"Not done: {exc}")
        return False
    st.session_state["trash_msg"] = ("ok", message(n))
    clear_cache()
    return True


def trash_message() -> None:
    if msg := st.session_state.pop("trash_msg", None):
        (st.success if msg[0] == "ok" else st.error)(msg[1])
