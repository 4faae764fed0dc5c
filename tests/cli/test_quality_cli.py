"""`curator score quality` and `select --quality-*`: the prior from the command line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from curator.cli import main
from curator.store import Store
from curator.store.selection_rows import get_selection
from tests.helpers import write_jsonl


def run(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="curator")
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pair_rows):
    from curator.testing import tiny_loaded_model

    tmp = tmp_path_factory.mktemp("quality-cli")
    model = tmp / "model"
    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    data = tmp / "d.jsonl"
    write_jsonl(data, pair_rows(12))
    run("ingest", data, "-d", "d", "--store", tmp / "s", "-q")
    return tmp / "s", model


def test_score_quality_is_incremental(setup):
    store, model = setup
    first = run("score", "quality", "-d", "d", "--store", store, "--model", model).stdout
    assert first.startswith("quality: 12 rows of d v1 (12 computed, 0 stored); 12 scored, ")
    again = run("score", "quality", "-d", "d", "--store", store, "--model", model).stdout
    assert again.startswith("quality: 12 rows of d v1 (0 computed, 12 stored)")


def test_select_takes_the_quality_options(setup):
    store, model = setup
    out = run("select", "-d", "d", "--store", store, "--model", model, "--method",
              "embedding", "--budget", "4", "--k", "3", "--quality-drop", "25%",
              "--quality-weight", "0.5")
    assert "quality prior (combined, drop 25%): left out 3 of 12 rows" in out.output
    sel = get_selection(Store(store), "sel-0001")
    assert sel.config["quality"]["weight"] == 0.5 and len(sel.config["quality"]["dropped"]) == 3
    bad = run("select", "-d", "d", "--store", store, "--model", model, "--quality-drop",
              "lots", ok=False)
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: --quality-drop must be 'auto', 'off' or a percentage")
