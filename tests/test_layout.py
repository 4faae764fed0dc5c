"""The package's shape: no import cycle among curator modules (imports inside functions
count: a cycle hidden in a function is still a cycle), and no module of logic over ~600
lines."""

from __future__ import annotations

import ast
from pathlib import Path

import curator

ROOT = Path(curator.__file__).parent
MAX_LINES = 620
# The sample-data builder is mostly word lists.
TOO_LONG_ALLOWED = {"curator.sample_data"}
# Still to split (issue 13); each entry goes when its module is split.
KNOWN_LONG = {"curator.store.browse"}
KNOWN_CYCLES: list[list[str]] = []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the curator modules it imports (``from a import b`` counts ``a.b`` when
    that is a module, else ``a``)."""
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
            if path.name == "__init__.py" else deps
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
