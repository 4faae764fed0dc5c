"""The app's reads: every ``read(...)`` in curator/app names a store function itself (no
string looked up at run time), and ``read`` refuses anything but a store function.

The check reads the app's source (the pages are Streamlit scripts: importing one would run
it), resolves each ``ui.read(module.function, ...)`` through the file's own imports, and
binds the call's arguments to the function's signature, so a renamed function or a wrong
argument count fails here, not on a page.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from curator.app import curator_ui
from curator.store import browse_versions
from curator.store.browse_filters import SampleFilter

APP = Path(curator_ui.__file__).parent
UI_MODULE = "curator.app.curator_ui"


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Name in the file -> the dotted path its import binds (``curator_ui``, on the pages'
    path, is ``curator.app.curator_ui``); resolved only when a read uses it."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module = UI_MODULE if a.name == "curator_ui" else a.name
                names[a.asname or a.name.split(".")[0]] = module if a.asname \
                    else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _load(dotted: str) -> Any:
    """The module or the module attribute ``dotted`` names."""
    try:
        return importlib.import_module(dotted)
    except ImportError:
        module, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def _resolve(node: ast.expr, names: dict[str, str]) -> Any:
    if isinstance(node, ast.Name):
        assert node.id in names, f"{node.id} is not imported"
        return _load(names[node.id])
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, names), node.attr)
    raise AssertionError(f"not a name: {ast.unparse(node)}")


def app_reads() -> list[tuple[str, int, ast.Call, dict[str, str]]]:
    """Every call of ``curator_ui.read`` in curator/app: (file, line, call, the file's
    imported names)."""
    out = []
    for path in sorted(APP.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _imported_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "read"
                    and isinstance(func.value, ast.Name)
                    and names.get(func.value.id) == UI_MODULE) \
                    or (path.name == "curator_ui.py" and isinstance(func, ast.Name)
                        and func.id == "read"):
                out.append((path.name, node.lineno, node, names))
    return out


def test_every_app_read_is_a_store_function_called_with_its_arguments():
    reads = app_reads()
    # every page and curator_ui itself read the store (a scan that finds few is broken)
    assert len(reads) >= 50
    assert {f for f, *_ in reads} >= {"curator_ui.py", "overview.py", "versions.py",
                                      "selections.py", "masks.py", "export.py", "quality.py"}
    for file, line, call, names in reads:
        where = f"{file}:{line}: {ast.unparse(call)}"
        assert call.args, where
        first = call.args[0]
        assert not isinstance(first, ast.Constant), f"a string name, not a function: {where}"
        reader = _resolve(first, names)
        assert curator_ui.reader_name(reader).startswith("curator.store."), where
        # the arguments fit the function (only for calls whose arguments can be counted)
        if not any(isinstance(a, ast.Starred) for a in call.args[1:]) \
                and all(k.arg for k in call.keywords):
            inspect.signature(reader).bind(
                "store", *call.args[1:], **{k.arg: k.value for k in call.keywords})


def test_read_takes_store_functions_only():
    assert curator_ui.reader_name(browse_versions.sample_page) == \
        "curator.store.browse_versions.sample_page"
    for not_a_reader in ("sample_page", "is_empty", lambda store: 1, print, SampleFilter,
                         curator_ui.plural, browse_versions):
        with pytest.raises(TypeError, match="store reader function"):
            curator_ui.reader_name(not_a_reader)
        with pytest.raises(TypeError, match="store reader function"):
            curator_ui.read(not_a_reader)


def test_a_function_defined_inside_another_is_refused():
    """A nested or rebound function's name would not find it again: refused, so two
    readers can never share a cache key."""
    def is_empty(store):
        return True

    is_empty.__module__ = "curator.store.browse_overview"
    with pytest.raises(TypeError):
        curator_ui.reader_name(is_empty)
