"""Issue 28's 69 new-user cases and its 3 extras (tests/safety/cases.py): the list names a
test for each, every named test exists, and here are the tests of the cases no other test
file covered. `pytest tests/safety` runs the fast ones; `pytest -m "" tests/safety` all."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator.cli import main
from tests.helpers import write_jsonl
from tests.kill_harness import (
    export_digests,
    kill_server,
    kill_then_rerun,
    question_rows,
    store_contents,
)
from tests.safety import cases

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="curator", **kwargs)


def _fails(*args) -> str:
    """A command that must fail: exit 1, one `error:` line on stderr, nothing on stdout."""
    r = _cli(*args)
    assert r.exit_code == 1, (r.output, r.exception)
    assert r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr[len("error: "):-1]


def _tree(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``path`` (hidden ones too) with its bytes and mode."""
    return {p.relative_to(path).as_posix(): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(path.rglob("*")) if p.is_file()}


# -- the list itself ----------------------------------------------------------------------


def test_the_list_holds_the_issues_69_cases_and_its_3_extras():
    ids = [c.id for c in cases.CASES]
    assert len(ids) == len(set(ids)) == 72
    by_area = {}
    for c in cases.CASES:
        by_area.setdefault(c.id[0], []).append(c)
        assert c.area == cases.AREAS[c.id[0]] and c.action and c.expected and c.nodes, c
    assert len(by_area.pop("F")) == 9 and len(by_area.pop("X")) == 3
    assert sum(len(v) for v in by_area.values()) == 60          # the ones that held
    assert set(by_area) == set(cases.AREAS) - {"F", "X"}       # every area has cases


def _defined_tests(path: Path) -> set[str]:
    """Test functions a module defines (module level, or ``Class::method``)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    return {n for n in names if n.split("::")[-1].startswith("test_")}


def test_every_case_names_tests_that_exist():
    """The list cannot rot: a renamed or removed test fails here with the case's id."""
    missing = []
    for c in cases.CASES:
        for node in c.nodes:
            file, _, name = node.partition("::")
            path = ROOT / file
            if not path.is_file() or name.split("[")[0] not in _defined_tests(path):
                missing.append(f"{c.id}: {node}")
    assert missing == []


def test_the_docs_describe_the_list():
    doc = (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
    assert "tests/safety/cases.py" in doc and "pytest tests/safety" in doc
    for area in cases.AREAS.values():
        assert area in doc, area


# -- bad inputs -----------------------------------------------------------------------------


def test_a_messy_folder_is_ingested_and_its_counts_add_up(tmp_path):
    """B09: one command over a folder of good, duplicate, empty, corrupt and malformed
    files: every bad file or row is one quarantined row, and the counts add up."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text('{"prompt": "a", "response": "b"}\n'
                                 '{"prompt": "c", "response": "d"}\n'
                                 '{"prompt": "a", "response": "b"}\n'     # duplicate
                                 '{"prompt": 1}\n'                         # no response
                                 'not json\n')
    (src / "b.jsonl").write_text("")                                      # empty file
    (src / "c.parquet").write_bytes(b"not a parquet file")               # corrupt file
    (src / "d.csv").write_text("prompt,response\ne,f\ng,h,i\n")          # 3 fields, not 2
    r = _cli("ingest", src, "-d", "d", "--store", tmp_path / "s")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[:3] == ["dataset d: version 1 (snapshot)",
                         "  rows read 9: accepted 3, duplicates 1, quarantined 5",
                         "  version: added 3, removed 0, unchanged 0, members 3"]
    assert sorted(lines[3:]) == sorted(
        f"  quarantined 1: {reason}" for reason in
        ["unreadable file", "empty file", "missing field 'response'", "malformed JSON",
         "expected 2 fields, got 3"])
    from curator.store import Store

    store = Store(tmp_path / "s")
    [(read, accepted, dups, quarantined, members)] = store.query(
        "SELECT n_read, n_accepted, n_duplicates, n_quarantined, n_members FROM versions")
    assert read == accepted + dups + quarantined and members == accepted
    assert store.query("SELECT count(*) FROM quarantine")[0][0] == quarantined
    assert store.query("SELECT count(*) FROM samples")[0][0] == accepted


def test_export_of_an_unknown_selection_writes_nothing(tmp_path):
    """B14."""
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    assert _cli("ingest", tmp_path / "d.jsonl", "-d", "d", "--store", tmp_path / "s",
                "-q").exit_code == 0
    assert _fails("export", "sel-0009", "--store", tmp_path / "s", "--out",
                  tmp_path / "out") == "no selection 'sel-0009' (see `curator selections`)"
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- kill -9 in curate ------------------------------------------------------------------------

CURATE_SERVER = r'''
# Imports once, then runs each `curator curate` in a forked child that kills itself at the
# n-th store transaction of the run, just before or after its commit (tests/kill_harness.py).
import json
from pathlib import Path

import torch
torch.set_num_threads(1)   # set before forking: tiny matrices, and no threads across fork

import transformers  # noqa: F401  (imported once, not in every child)
from curator.cli import main
import curator.runner  # noqa: F401
from tests.kill_harness import kill_in_transactions, serve


def curate(job):
    counts, phase = kill_in_transactions(job["plan"])
    phase[0] = "curate"
    main(["curate", "--recipe", str(Path(job["work"]) / "recipe.json"), "--store", job["store"]],
         standalone_mode=False)
    Path(job["counts"]).write_text(json.dumps(counts))


serve(curate, log_name="curate.log")
'''


def _curate_inputs(work: Path, model: Path) -> None:
    write_jsonl(work / "v1.jsonl", [*question_rows(0, 12), '{"prompt": "no response"}'])
    write_jsonl(work / "v2.jsonl", question_rows(12, 18) + question_rows(3, 4))
    recipe = {
        "dataset": "d", "model": str(model),
        "inputs": [{"path": "v1.jsonl", "append": False}, {"path": "v2.jsonl"}],
        "scoring": {"k": 3, "batch_size": 4, "max_length": 96, "hubs": 0, "dtype": "fp32"},
        "stages": [{"name": "base", "stage": "instruction", "budget": "4", "version": 1},
                   {"name": "update", "stage": "continual", "budget": "3", "version": 2,
                    "parent": "previous", "param_budget": "10%"}],
        "export": {"format": "jsonl", "out": "exports"},
    }
    (work / "recipe.json").write_text(json.dumps(recipe))


def _exported(work: Path) -> dict:
    return export_digests({p.name: p for p in (work / "exports").iterdir()})


@pytest.mark.slow  # kill -9 of curate, a process each: make test-slow
def test_kill_9_in_curate_then_rerun_gives_what_one_run_gives(tmp_path, monkeypatch):
    """K05: `curator curate` killed twice (seeded moments), then run once more: the
    store and the exports are those of one uninterrupted curate, nothing left running."""
    import random

    from curator.store import Store
    from curator.testing import tiny_loaded_model

    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path / "cache"))
    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    ref_work, ref_store = tmp_path / "ref", tmp_path / "ref-store"
    work, store = tmp_path / "crash", tmp_path / "crash-store"
    _curate_inputs(ref_work, tmp_path / "model")
    _curate_inputs(work, tmp_path / "model")

    def plans(counts: dict[str, int]) -> list[dict]:
        total = counts["curate"]
        assert total > 10
        rng = random.Random(28)
        # each killed run resumes what the one before left
        return [{"phase": "curate", "n": rng.randint(1, total // 2),
                 "when": rng.choice(["before", "after"])} for _ in range(2)]

    with kill_server(tmp_path / "server.py", CURATE_SERVER, logs="*/curate.log") as server:
        killed = kill_then_rerun(server, (ref_store, ref_work), (store, work), plans)
    print(f"killed at {killed}")

    expected = store_contents(ref_store)
    assert expected["running"] == [] and len(expected["selections"]) == 2
    assert store_contents(store) == expected, killed
    assert _exported(work) == _exported(ref_work), killed
    runs = Store(store).query("SELECT status, error FROM runs WHERE kind = 'curate' "
                              "ORDER BY started_at")
    assert runs[-1] == ("done", None)
    assert all(s == "failed" and e.startswith("abandoned") for s, e in runs[:-1]), runs


# -- export and train refusals -------------------------------------------------------------


def _export(tmp_path: Path) -> Path:
    """A random selection of three rows, exported as JSONL."""
    from curator.ingestion.ingest import ingest
    from curator.outputs.subsets import export_selection
    from curator.store import Store
    from curator.store.datasets import load_samples
    from curator.store.selection_rows import SelectionRecord, save_selection

    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(4)]
    store = Store(tmp_path / "store", lock_timeout=10)
    ingest(store, write_jsonl(tmp_path / "d.jsonl", rows), "d")
    ids = [s.sample_id for s in load_samples(store, "d", 1)][:3]
    sid = save_selection(store, SelectionRecord("d", 1, "instruction", "random", "3", 4, 3),
                         ids)
    return export_selection(store, sid, tmp_path / "export").path


def test_train_on_an_edited_export_is_refused_before_training(tmp_path):
    """T05: the export's checksums are checked before a model loads (the model path here
    does not exist: reaching it would be another error)."""
    export = _export(tmp_path)
    with (export / "data.jsonl").open("a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "mine"}]}\n')
    message = _fails("train", export, "--out", tmp_path / "trained", "--model",
                     tmp_path / "no-model", "--steps", 1)
    assert message.startswith(f"{export}") and "data.jsonl" in message, message
    assert not (tmp_path / "trained").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "export", "store"]


# -- security ---------------------------------------------------------------------------------


def test_a_recipe_that_would_run_code_is_refused_in_one_line(tmp_path):
    """S06: recipes are read with yaml.safe_load, so a python tag constructs nothing; its
    error (and any YAML error) is one line with the place, not yaml's three-line report
    with a caret (found here: curate printed four lines)."""
    flag = tmp_path / "ran"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f'dataset: !!python/object/apply:os.system ["touch {flag}"]\n'
                      "stages:\n  - {budget: 2}\n")
    assert _fails("curate", "--recipe", recipe, "--store", tmp_path / "s") == (
        f"{recipe} is not valid yaml: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system' (line 1, column 10)")
    assert not flag.exists() and not (tmp_path / "s").exists()
    recipe.write_text("dataset: [unclosed\n")
    assert _fails("curate", "--recipe", recipe, "--store", tmp_path / "s") == (
        f"{recipe} is not valid yaml: expected ',' or ']', but got '<stream end>' "
        "(line 2, column 1)")
    recipe.write_bytes(b"\xff\xfedataset: d\n")
    assert _fails("curate", "--recipe", recipe, "--store", tmp_path / "s") == (
        f"{recipe} is not UTF-8 text (invalid start byte at byte 0)")
    json_recipe = tmp_path / "r.json"
    json_recipe.write_text("{\n")
    assert _fails("curate", "--recipe", json_recipe, "--store", tmp_path / "s").startswith(
        f"{json_recipe} is not valid json: Expecting property name")


# -- eval ---------------------------------------------------------------------------------------


def test_eval_data_without_usable_rows_is_one_line(tmp_path):
    """V02: no --model, so reaching the model would load the default one: the data is
    read first."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": 1}\nnot json\n')
    assert _fails("eval", "--data", data) == f"{data}: no usable rows"


@pytest.fixture
def saved_model(tmp_path):
    from curator.testing import tiny_loaded_model

    lm = tiny_loaded_model("qwen2")
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_eval_leaves_the_model_folder_as_it_was(saved_model, tmp_path, monkeypatch):
    """X2: `eval --model DIR` wrote hidden .NAME.sha256 files into DIR; the checksums are
    memoised in CURATOR_CACHE now, and DIR is left byte for byte and mode for mode."""
    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "heldout.jsonl"
    data.write_text('{"prompt": "What is 2 + 2?", "response": "4"}\n')
    before = _tree(saved_model)
    for _ in range(2):   # the second run reads the memo
        r = _cli("eval", "--model", saved_model, "--data", data)
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("answer loss ")
    assert _tree(saved_model) == before
    assert [p.name for p in saved_model.iterdir() if p.name.startswith(".")] == []
    assert any((tmp_path / "cache" / "checksums").iterdir())


# -- environment variables -------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [("CURATOR_LOCK_TIMEOUT", "abc"),
                                         ("CURATOR_RAY_TIMEOUT", "-5"),
                                         ("CURATOR_APP_LOCK_TIMEOUT", "nan"),
                                         ("CURATOR_CACHE", "a file")])
def test_help_works_with_a_bad_environment_variable(monkeypatch, tmp_path, name, value):
    """N03: a user who set a bad value still gets the help that says what it should be,
    and the command itself then says what is wrong in one line. (The entry point looks for
    -h/--help in sys.argv, so the test sets it as a shell would.)"""
    if name == "CURATOR_CACHE":
        (tmp_path / "cache").write_text(value)
        value = str(tmp_path / "cache")
    monkeypatch.setenv(name, value)
    for command in (["--help"], ["export", "--help"], ["ingest", "-h"]):
        monkeypatch.setattr(sys, "argv", ["curator", *command])
        r = _cli(*command)
        assert r.exit_code == 0, (command, r.output)
        assert r.output.startswith("Usage: curator"), r.output
    monkeypatch.setattr(sys, "argv", ["curator", "selections"])
    assert _fails("selections", "--store", tmp_path / "s").startswith(name)
    assert not (tmp_path / "s").exists()
