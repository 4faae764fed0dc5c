"""`curator schedule ...` and `curator worker`: outputs and exit codes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import curator.schedule as sch
import curator.schedule.files as sch_files
from curator.cli.schedule import register
from curator.store import Store
from tests.helpers import write_jsonl

RANDOM_RECIPE = {"dataset": "ignored",
                 "stages": [{"stage": "continual", "method": "random", "budget": "30%"}]}


@pytest.fixture(autouse=True)
def no_settle(monkeypatch):
    monkeypatch.setattr(sch_files, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def main() -> click.Group:
    """A bare group with the schedule commands registered, as curator/cli.py does."""
    @click.group()
    def group() -> None:
        pass

    register(group)
    return group


@pytest.fixture
def env(tmp_path):
    watch = tmp_path / "incoming"
    watch.mkdir()
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RANDOM_RECIPE))
    return {"store": tmp_path / "s", "watch": watch, "recipe": recipe, "tmp": tmp_path}


def invoke(main, *args, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="curator")
    assert result.exit_code == code, (result.output, result.exception)
    return result


def error(main, *args) -> str:
    """A command that must fail with one `error:` line and exit 1."""
    result = invoke(main, *args, code=1)
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1][len("error: "):]


def drop(folder: Path, name: str, lo: int, hi: int) -> None:
    write_jsonl(folder / name,
                [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(lo, hi)])


def test_the_commands_are_registered_on_the_real_cli():
    from curator.cli import main as real_main

    assert {"schedule", "worker"} <= set(real_main.commands)
    assert set(real_main.commands["schedule"].commands) == \
        {"add", "list", "pause", "resume", "remove", "run", "history"}


@pytest.mark.parametrize("args", [["schedule"], ["worker"]] + [
    ["schedule", c] for c in ("add", "list", "pause", "resume", "remove", "run", "history")])
def test_every_command_has_help(main, args):
    out = invoke(main, *args, "--help").output
    assert out.startswith("Usage: curator " + " ".join(args))
    assert ("--store" in out) == (args != ["schedule"])


def test_add_list_pause_resume_remove(main, env):
    s, w = env["store"], env["watch"]
    out = invoke(main, "schedule", "add", "nightly", "-d", "support", "--watch", w,
                 "--cron", "0 2 * * *", "--store", s).output
    assert out == (f"schedule nightly: watches {w.resolve()} for dataset support, cron "
                   "0 2 * * * (UTC), delift 30%; due now (the next `curator worker` cycle "
                   "runs it)\n")
    invoke(main, "schedule", "add", "hourly", "-d", "other", "--watch", w, "--every", "1h",
           "--recipe", env["recipe"], "--store", s)
    lines = invoke(main, "schedule", "list", "--store", s).output.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["name", "dataset", "trigger", "state",
                                             "next run (UTC)", "last run"]
    assert re.split(r"\s{2,}", lines[1])[:4] == ["hourly", "other", "every 1h", "waiting"]
    assert re.split(r"\s{2,}", lines[2])[:4] == ["nightly", "support", "cron 0 2 * * *",
                                                 "waiting"]
    assert lines[2].endswith("  -")
    assert invoke(main, "schedule", "pause", "nightly", "--store", s).output == \
        "schedule nightly paused\n"
    assert "paused" in invoke(main, "schedule", "list", "--store", s).output.splitlines()[2]
    assert invoke(main, "schedule", "resume", "nightly", "--store", s).output.startswith(
        "schedule nightly resumed; next run ")
    assert invoke(main, "schedule", "remove", "nightly", "--store", s).output == \
        "schedule nightly removed (its runs, selections and exports stay)\n"
    assert error(main, "schedule", "pause", "nightly", "--store", s) == \
        "no schedule 'nightly' (known: hourly)"
    invoke(main, "schedule", "remove", "hourly", "--store", s)
    assert invoke(main, "schedule", "list", "--store", s).output == \
        "no schedules (add one with `curator schedule add`)\n"


def test_add_errors_are_one_line(main, env):
    s, w = env["store"], env["watch"]
    base = ["schedule", "add", "n", "-d", "d", "--store", s]
    assert error(main, *base, "--watch", w) == \
        "give exactly one of --every DURATION or --cron EXPRESSION"
    assert error(main, *base, "--watch", w, "--every", "1h", "--cron", "* * * * *") == \
        "give exactly one of --every DURATION or --cron EXPRESSION"
    assert error(main, *base, "--watch", w, "--cron", "0 2 * *").startswith(
        "bad cron expression '0 2 * *'")
    assert error(main, *base, "--watch", w, "--every", "often").startswith("bad duration")
    assert error(main, *base, "--watch", w / "missing", "--every", "1h") == \
        f"watched folder {(w / 'missing').resolve()} does not exist (create it first)"
    bad = env["tmp"] / "bad.yaml"
    bad.write_text("dataset: d\nstages: [{stage: instruction}]\n")
    assert "needs a continual stage" in error(main, *base, "--watch", w, "--every", "1h",
                                              "--recipe", bad)


def test_worker_once_then_history(main, env):
    s, w = env["store"], env["watch"]
    invoke(main, "schedule", "add", "n", "-d", "d", "--watch", w, "--every", "1h",
           "--recipe", env["recipe"], "--store", s)
    drop(w, "a.jsonl", 0, 10)
    (w / "bad.jsonl").write_text("not json\n")
    out = invoke(main, "worker", "--once", "--store", s).output
    run_id = re.search(r"run (sched-\S+) started", out).group(1)
    assert f"n: quarantined {w / 'bad.jsonl'}: no usable rows (line 1: malformed JSON" in out
    export = Path(s).resolve() / "exports" / "n" / run_id
    # the run report's one line, worded the same in the log, the history and the app
    what = ("1 new file -> v1; 1 bad file quarantined: bad.jsonl (no usable rows (line 1: "
            f"malformed JSON: Expecting value)); instruction selection sel-0001: 3 of 10; "
            f"export {export}")
    assert out.splitlines()[-1] == f"n: run {run_id} done: {what}"
    assert (export / "manifest.json").exists()
    assert os.readlink(Path(s) / "exports" / "n" / "latest") == run_id
    assert invoke(main, "worker", "--once", "--store", s).output == "nothing due\n"
    history = invoke(main, "schedule", "history", "n", "--store", s).output
    assert history == f"{run_id}  done     due     {what}\n"
    listed = invoke(main, "schedule", "list", "--store", s).output.splitlines()[1]
    assert listed.endswith(f"done {run_id}")


def test_run_now_and_failures(main, env, monkeypatch):
    s, w = env["store"], env["watch"]
    invoke(main, "schedule", "add", "n", "-d", "d", "--watch", w, "--cron", "0 2 * * *",
           "--recipe", env["recipe"], "--store", s)
    drop(w, "a.jsonl", 0, 10)
    result = invoke(main, "schedule", "run", "n", "--store", s)
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"run sched-\S+: done in \d+\.\d s", lines[0])
    assert lines[1:3] == ["  files: 1 new, 0 already ingested, 0 quarantined, 0 still being "
                          "written", "  new version: v1 (0 rows quarantined)"]
    # the random method scores no pairs: the stage's line says none
    assert re.fullmatch(r"  instruction selection sel-0001: 3 of 10; \d+\.\d s", lines[3])
    assert re.fullmatch(r"  export: \S+/exports/n/sched-\S+", lines[4])
    assert "started (manual)" in result.stderr
    # A failed run is one error line and exit 1; the worker retries it later.
    import curator.outputs.subsets

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(curator.outputs.subsets, "export_selection", broken)
    drop(w, "b.jsonl", 10, 20)
    assert re.fullmatch(r"run sched-\S+ failed: disk full",
                        error(main, "schedule", "run", "n", "--store", s))
    sch.request_run(Store(s), "n")
    assert re.fullmatch(r"1 of 1 runs failed: n: disk full",
                        error(main, "worker", "--once", "--store", s))
    assert "last error (2 in a row): disk full" in \
        invoke(main, "schedule", "list", "--store", s).output
    # Busy: another worker holds the lease.
    store = Store(s)
    sch.acquire_lease(store, "n", "elsewhere:1:x", sch.SystemClock().now())
    assert error(main, "schedule", "run", "n", "--store", s).startswith(
        "schedule n is running (elsewhere:1:x, lease until ")
    assert invoke(main, "schedule", "run", "n", "--queue", "--store", s).output == \
        "schedule n is due now: the next worker cycle runs it\n"


def test_default_recipe_uses_the_embedded_model_loader(main, env, monkeypatch, one_thread):
    """No --recipe: continual DELIFT at 30% with the default model (a tiny one here)."""
    import curator.models
    from curator.testing import tiny_loaded_model

    loaded = []

    def fake_load_model(name=None, **kwargs):
        loaded.append(name)
        return tiny_loaded_model("llama")

    monkeypatch.setattr(curator.models, "load_model", fake_load_model)
    s, w = env["store"], env["watch"]
    invoke(main, "schedule", "add", "n", "-d", "d", "--watch", w, "--every", "1d",
           "--store", s)
    drop(w, "a.jsonl", 0, 8)
    out = invoke(main, "schedule", "run", "n", "--store", s).output
    assert loaded == [None]
    assert re.search(r"  instruction selection sel-0001: 2 of 8; objective \d+\.\d+; pairs "
                     r"scored [1-9]\d*, reused 0; prior left out \d+; \d+\.\d s\n", out)


def test_commands_other_than_add_need_an_existing_store(main, env):
    missing = env["tmp"] / "nowhere"
    for args in (["schedule", "list"], ["schedule", "pause", "n"], ["worker", "--once"]):
        assert error(main, *args, "--store", missing) == \
            f"no curator store at {missing} (create one with `curator init`)"
    assert not missing.exists()
