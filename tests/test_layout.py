"""The package's shape: imports point down the layers of docs/architecture.md (``LAYERS``:
a module may import its own layer and those below, never one above), no import cycle among
curator modules (imports inside functions count for both: a cycle or an upward import hidden
in a function is still one), and no module of logic over ~600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import curator

ROOT = Path(curator.__file__).parent
MAX_LINES = 620
# The sample-data builder is mostly word lists.
TOO_LONG_ALLOWED = {"curator.sample_data"}
# Still to split (issue 13); each entry goes when its module is split.
KNOWN_LONG: set[str] = set()
KNOWN_CYCLES: list[list[str]] = []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def import_graph(own_submodules: bool = False) -> dict[str, set[str]]:
    """module -> the curator modules it imports (``from a import b`` counts ``a.b`` when
    that is a module, else ``a``). A package's __init__ importing its own submodules is left
    out (not a cycle with them) unless ``own_submodules``: for the layers it counts, since
    the __init__ runs whenever any of its submodules is imported."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 \
                        else package
                    base = f"{anchor}.{base}" if base else anchor
                for a in node.names:
                    full = f"{base}.{a.name}"
                    if full in mods:
                        deps.add(full)
                    elif base in mods:
                        deps.add(base)
        deps.discard(name)
        # a package's __init__ importing its own submodules is not a cycle with them
        graph[name] = {d for d in deps if not d.startswith(name + ".")} \
            if path.name == "__init__.py" and not own_submodules else deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == KNOWN_CYCLES


# The layers, bottom to top (docs/architecture.md): each entry is a module or a package
# (a package holds its submodules; the nearest entry wins). A module may import from its own
# layer and the layers below it; an import from a lower layer to a higher one fails
# `test_imports_point_down`. A room whose members sit on different layers (ingestion,
# outputs) is listed on its lowest member's layer: its __init__ runs whenever any member is
# imported, so it may import nothing above that layer.
LAYERS: list[tuple[str, set[str]]] = [
    ("environment, folders", {"curator", "curator.env", "curator.digests", "curator.folders"}),
    ("vocabulary", {"curator.vocabulary", "curator.budget"}),
    ("records, configs", {"curator.records", "curator.config", "curator.ingestion",
                          "curator.ingestion.schemas", "curator.ingestion.readers"}),
    # Maths over arrays: below the store and the model (see test_selection_is_maths_only).
    ("selection", {"curator.selection"}),
    ("store", {"curator.store"}),
    ("ingest", {"curator.ingestion.ingest"}),
    ("models", {"curator.models"}),
    ("scoring", {"curator.scoring"}),
    # Mask files name parameters by scoring's layer and module-kind rules.
    ("masks", {"curator.outputs", "curator.outputs.mask_files"}),
    ("stages", {"curator.stages"}),
    ("outputs", {"curator.outputs.subsets", "curator.training"}),
    ("pipeline", {"curator.pipeline"}),
    ("recipes, schedules", {"curator.report", "curator.runner", "curator.schedule"}),
    # The demo runs recipes; the tiny test models and the sample data serve it and the tests.
    ("demo", {"curator.demo", "curator.sample_data", "curator.testing"}),
    ("shells", {"curator.cli", "curator.app"}),
]
# Imports that run up the layers, each with the reason it is allowed (none now).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def layer_index(module: str, layers: list[tuple[str, set[str]]] = LAYERS) -> int | None:
    """The layer holding ``module``: the entry that is the module or its nearest package."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        for i, (_, members) in enumerate(layers):
            if prefix in members:
                return i
    return None


def upward_imports(graph: dict[str, set[str]],
                   layers: list[tuple[str, set[str]]] = LAYERS) -> list[str]:
    """Every import from a module to one in a higher layer, as "a (layer) -> b (layer)"."""
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer_index(a, layers), layer_index(b, layers)
            if la is not None and lb is not None and lb > la and (a, b) not in KNOWN_UPWARD:
                out.append(f"{a} ({layers[la][0]}) -> {b} ({layers[lb][0]})")
    return out


def test_the_layer_check_finds_an_upward_import():
    layers = [("low", {"p.low"}), ("mid", {"p.mid"}), ("high", {"p.high", "p.top"})]
    graph = {"p.high.view": {"p.mid.x", "p.low"}, "p.mid.x": {"p.low", "p.mid.y"},
             "p.mid.y": set(), "p.low": set(), "p.top": {"p.high.view"}}
    assert upward_imports(graph, layers) == []
    # the store's heatmap reading a mask file (issue 25): low -> high, hidden in a function
    graph["p.low"] = {"p.high.view"}
    graph["p.mid.y"] = {"p.top"}
    assert upward_imports(graph, layers) == ["p.low (low) -> p.high.view (high)",
                                             "p.mid.y (mid) -> p.top (high)"]
    # and on the real tree: a store module importing the exporter would fail the test
    real = import_graph()
    real["curator.store.browse_masks"] = real["curator.store.browse_masks"] | {
        "curator.outputs.subsets"}
    assert upward_imports(real) == [
        "curator.store.browse_masks (store) -> curator.outputs.subsets (outputs)"]


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_index(m) is None] == []


def test_a_room_that_spans_layers_imports_nothing_above_its_lowest():
    """curator/ingestion/__init__.py re-exporting the ingest (above the store) would run the
    store whenever a reader (below it) is imported: an upward import, though not a cycle."""
    real = import_graph(own_submodules=True)
    real["curator.ingestion"] = real["curator.ingestion"] | {"curator.ingestion.ingest"}
    assert upward_imports(real) == [
        "curator.ingestion (records, configs) -> curator.ingestion.ingest (ingest)"]
    # an __init__'s own submodules count for the layers, not for cycles
    assert "curator.schedule.run" in import_graph(own_submodules=True)["curator.schedule"]
    assert "curator.schedule.run" not in import_graph()["curator.schedule"]


def test_imports_point_down():
    assert upward_imports(import_graph(own_submodules=True)) == []


# curator/selection/ is maths over arrays (set functions, optimisers, the mask and layer
# subset rules): it imports no torch, no model and no scoring (issue 25); the passes that
# make the arrays are curator/stages/.
SELECTION_MUST_NOT_IMPORT = ("torch", "curator.scoring", "curator.models")
# Imports of those that are allowed, each with its reason (none: a torch generator's draws
# reach selection.gast wrapped by curator.stages.gradient_passes.torch_uniforms).
KNOWN_SELECTION_IMPORTS: set[tuple[str, str]] = set()


def imported_names(source: str) -> set[str]:
    """Every module an import statement names (absolute imports; inside functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def forbidden_imports(name: str, source: str,
                      banned: tuple[str, ...] = SELECTION_MUST_NOT_IMPORT) -> set[tuple[str, str]]:
    return {(name, b) for imp in imported_names(source) for b in banned
            if imp == b or imp.startswith(b + ".")}


def test_the_selection_check_finds_torch_and_scoring():
    source = ("import numpy as np\ndef f():\n    import torch.nn\n"
              "from curator.scoring.gradients.scope import layer_of\n"
              "from curator import models\nfrom curator.budget import parse_budget\n")
    assert forbidden_imports("m", source) == {("m", "torch"), ("m", "curator.scoring"),
                                              ("m", "curator.models")}
    assert forbidden_imports("m", "import torchvision\nimport numpy\n") == set()


def test_selection_is_maths_only():
    found = set().union(*(forbidden_imports(name, path.read_text(encoding="utf-8"))
                          for name, path in modules().items()
                          if name == "curator.selection" or name.startswith("curator.selection.")))
    assert found == KNOWN_SELECTION_IMPORTS


def test_no_long_modules():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
            and name not in TOO_LONG_ALLOWED | KNOWN_LONG}
    assert long == {}


def test_the_app_ships_in_the_package():
    """`pip install .` takes the packages setuptools finds under `include = ["curator*"]`:
    the app and its pages must be among them for `curator app` to start from a wheel."""
    from setuptools import find_packages

    found = set(find_packages(ROOT.parent, include=["curator*"]))
    assert {"curator.app", "curator.app.views"} <= found
    assert (ROOT / "app" / "streamlit_app.py").is_file()
    # the checkout's top-level app/ (below) is an entry, not a package: never installed
    assert not {p for p in found if p.split(".")[0] != "curator"}


def test_the_checkout_entry_runs_the_packaged_app(monkeypatch, tmp_path):
    """`streamlit run app/streamlit_app.py` from a checkout (Streamlit's convention) runs
    the app in the package, pages and all."""
    from streamlit.testing.v1 import AppTest

    entry = ROOT.parent / "app" / "streamlit_app.py"
    monkeypatch.setenv("CURATOR_STORE", str(tmp_path / "s"))
    at = AppTest.from_file(str(entry), default_timeout=60).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["curator"]  # the Overview page
    assert str(tmp_path / "s") in at.caption[0].value


def test_ci_runs_what_make_test_leaves_out():
    """`make test` leaves out the `slow` and `browser` tests (pyproject's addopts);
    .ci/run runs `make test`, `make test-slow` and the browser tests, so CI runs them all."""
    top = ROOT.parent
    if not (top / ".ci" / "run").is_file():
        pytest.skip("not a checkout")
    assert "addopts = \"-m 'not slow and not browser'" in (top / "pyproject.toml").read_text()
    assert "-m slow" in (top / "Makefile").read_text().split("\ntest-slow:")[1].split("\n\n")[0]
    ci = [line.strip() for line in (top / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert {"make test", "make test-slow"} <= set(ci)
    assert any(line.startswith(".venv/bin/python -m pytest -q -m browser") for line in ci)


# Only curator/store/ writes SQL (issue 13).
SQL_CALLS = {"execute", "executemany", "query", "query_dicts"}
KNOWN_SQL_OUTSIDE_STORE: set[str] = set()


def _is_sql_text(node: ast.expr) -> bool:
    """A string, an f-string, a concatenation of them, or a variable (SQL built earlier)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr | ast.Name):
        return True
    if isinstance(node, ast.BinOp):
        return _is_sql_text(node.left) or _is_sql_text(node.right)
    return False


def sql_calls(source: str) -> list[int]:
    """Lines of ``x.execute(SQL, ...)`` (and executemany, query, query_dicts) calls."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_CALLS and node.args and _is_sql_text(node.args[0])]


def test_the_sql_finder_finds_sql():
    assert sql_calls('con.execute("SELECT 1")\nstore.query(f"SELECT {c}", [])\n'
                     'con.executemany("INSERT " + "x", rows)\nstore.query_dicts(sql)\n'
                     'x.execute(callback)\n') == [1, 2, 3, 4, 5]
    assert sql_calls("pool.submit(fn)\nselect_rows(store, 3)\n") == []


def test_only_the_store_writes_sql():
    outside = {name: lines for name, path in modules().items()
               if not (name == "curator.store" or name.startswith("curator.store."))
               and (lines := sql_calls(path.read_text(encoding="utf-8")))}
    assert set(outside) == KNOWN_SQL_OUTSIDE_STORE, outside
