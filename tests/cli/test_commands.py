"""The `curator` command: exact outputs and exit codes (0; 1 with one `error:` line)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator.cli import main
from curator.records import sample_id_for
from curator.store import Store
from curator.store.datasets import list_versions
from curator.store.schema import LATEST
from tests.helpers import write_jsonl

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="curator")
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def fail(*args: str) -> str:
    """Run a command that must fail: exit 1, nothing on stdout, one `error:` line on stderr."""
    result = run(*args, ok=False)
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("error: "):-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory, write_numbered):
    """Store with dataset "d": v1 = 0..3 + a bad line, v2 = snapshot 2..5 (read-only)."""
    tmp = tmp_path_factory.mktemp("cli")
    store = tmp / "s"
    run("ingest", write_numbered(tmp / "v1.jsonl", range(4), ['{"prompt": 1}']), "-d", "d",
        "--store", store, "-q")
    run("ingest", write_numbered(tmp / "v2.jsonl", range(2, 6)), "-d", "d", "--store", store,
        "-m", "second")
    return store


# -- init -----------------------------------------------------------------------------------


def test_init_creates_then_reports_existing(tmp_path):
    store = tmp_path / "s"
    assert run("init", "--store", store).output == \
        f"store created: {store.resolve()} (schema version {LATEST})\n"
    assert run("init", "--store", store).output == \
        f"store exists: {store.resolve()} (schema version {LATEST})\n"
    assert (store / "curator.duckdb").is_file() and (store / "artifacts").is_dir()


def test_store_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATOR_STORE", str(tmp_path / "env"))
    assert run("init").output.startswith(f"store created: {(tmp_path / 'env').resolve()} ")


# -- ingest ---------------------------------------------------------------------------------


def test_ingest_prints_the_summary(tmp_path, write_numbered):
    source = write_numbered(tmp_path / "a.jsonl", [0, 1, 0], ["not json", '{"prompt": "p"}'])
    result = run("ingest", source, "-d", "d", "--store", tmp_path / "s")
    assert result.stdout == (
        "dataset d: version 1 (snapshot)\n"
        "  rows read 5: accepted 2, duplicates 1, quarantined 2\n"
        "  version: added 2, removed 0, unchanged 0, members 2\n"
        "  quarantined 1: malformed JSON\n"
        "  quarantined 1: missing field 'response'\n"
    )
    result = run("ingest", write_numbered(tmp_path / "b.jsonl", [2]), "-d", "d", "--store",
                 tmp_path / "s", "--append")
    assert result.stdout == (
        "dataset d: version 2 (append on version 1)\n"
        "  rows read 1: accepted 1, duplicates 0, quarantined 0\n"
        "  version: added 1, removed 0, unchanged 2, members 3\n"
    )


def test_ingest_with_field_options(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("q,a,topic\nQ1,A1,x\n")
    run("ingest", path, "-d", "d", "--store", tmp_path / "s", "--prompt-field", "q",
        "--response-field", "a")
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"turns": [{"from": "human", "value": "hi"},
                                          {"from": "gpt", "value": "yo"}]}) + "\n")
    run("ingest", chat, "-d", "c", "--store", tmp_path / "s", "--messages-field", "turns")
    out = run("show", "-d", "d", "--store", tmp_path / "s").stdout
    qa = sample_id_for([{"role": "user", "content": "Q1"},
                        {"role": "assistant", "content": "A1"}])
    assert out == f"d v1: 1 samples\n- {qa} topic=x\n    prompt:   Q1\n    response: A1\n"
    assert run("show", "-d", "c", "--store", tmp_path / "s").stdout.endswith(
        "    prompt:   hi\n    response: yo\n")


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "{path} is empty"),
    ("blank.jsonl", b"\n\n", "{path}: no rows found"),
    ("bad.jsonl", b"{oops\n", "{path}: no usable rows (1 quarantined: 1 malformed JSON)"),
    ("latin1.jsonl", b'{"prompt": "\xe9", "response": "r"}\n',
     "{path}: no usable rows (1 quarantined: 1 not valid UTF-8)"),
    ("fields.jsonl", b'{"prompt": "p", "response": ""}\n',
     "{path}: no usable rows (1 quarantined: 1 field 'response' is empty)"),
    ("type.jsonl", b'{"prompt": "p", "response": 5}\n',
     "{path}: no usable rows (1 quarantined: 1 field 'response' must be text, got int)"),
    ("cols.csv", b"prompt,response\np\n",
     "{path}: no usable rows (1 quarantined: 1 expected 2 fields, got 1)"),
    ("latin1.csv", b"prompt,response\n\xe9,r\n",
     "{path}: no usable rows (1 quarantined: 1 not valid UTF-8)"),
    ("header.csv", b"prompt,response\n", "{path}: no rows found"),
    ("bad.json", b"[1,\n{", "{path} is not valid JSON: Expecting property name enclosed in "
                         "double quotes at line 2"),
    ("data.xml", b"<x/>", "unknown format for {path}: use one of .csv, .json, .jsonl, .ndjson, "
                          ".parquet, .pq, .tsv, a folder of them, or a saved Hugging Face dataset"),
])
def test_bad_input_exits_1_with_one_line_and_creates_no_version(tmp_path, name, content,
                                                                message):
    path = tmp_path / name
    path.write_bytes(content)
    store = tmp_path / "s"
    assert fail("ingest", path, "-d", "d", "--store", store, "-q") == message.format(path=path)
    if (store / "curator.duckdb").exists():
        assert Store(store).query("SELECT count(*) FROM versions") == [(0,)]


def test_missing_input_and_missing_store(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert fail("ingest", missing, "-d", "d", "--store", tmp_path / "s") == \
        f"no such file or folder: {missing}"
    assert fail("versions", "-d", "d", "--store", tmp_path / "none") == \
        f"no curator store at {tmp_path / 'none'} (create one with `curator init`)"


def test_a_missing_path_with_a_slash_is_not_a_hub_lookup(tmp_path, monkeypatch):
    """`curator ingest foo/bar` used to retry hub lookups for ~30 s; now only hub:NAME or
    --hub ask the hub, and an unreachable hub fails with one line (no network is reached)."""
    import time

    from curator.ingestion import readers

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def unreachable(name):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(readers, "hub_lookup", unreachable)
    started = time.monotonic()
    assert fail("ingest", "foo/bar", "-d", "d", "--store", "s") == (
        "no such file or folder: foo/bar (for a Hugging Face hub data set use hub:foo/bar "
        "or --hub)")
    for args in (["hub:foo/bar"], ["foo/bar", "--hub"]):
        assert fail("ingest", *args, "-d", "d", "--store", "s") == (
            "cannot load 'foo/bar' from the Hugging Face hub: [Errno 101] Network is "
            "unreachable")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "s").exists()  # refused before the store was touched


def test_a_bad_lock_timeout_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATOR_LOCK_TIMEOUT", "abc")
    assert fail("init", "--store", tmp_path / "s") == \
        "CURATOR_LOCK_TIMEOUT must be a non-negative number of seconds, got 'abc'"


def test_usage_errors_exit_2(tmp_path):
    result = run("ingest", tmp_path / "a.jsonl", "--store", tmp_path / "s", ok=False)
    assert result.exit_code == 2
    assert "Missing option '--dataset' / '-d'" in result.stderr


# -- versions, diff, show -------------------------------------------------------------------


def test_versions_table(built):
    out = run("versions", "-d", "d", "--store", built).stdout.splitlines()
    v1, v2 = list_versions(Store(built), "d")
    assert out == [
        "version parent mode      members   added removed  dups  quar  created              "
        "source",
        f"      1      - snapshot        4       4       0     0     1  "
        f"{v1.created_at:%Y-%m-%d %H:%M:%S}  {v1.source}",
        f"      2      1 snapshot        4       2       2     0     0  "
        f"{v2.created_at:%Y-%m-%d %H:%M:%S}  {v2.source}",
    ]


def test_diff_lines(built, numbered_id):
    default = run("diff", "-d", "d", "--store", built).stdout
    added = sorted([numbered_id(4), numbered_id(5)])
    removed = sorted([numbered_id(0), numbered_id(1)])
    prompt = {numbered_id(i): f"prompt {i}" for i in range(6)}
    assert default == "d: v1 -> v2: added 2, removed 2, unchanged 2\n" + "".join(
        f"  + {s}  {prompt[s]}\n" for s in added) + "".join(
        f"  - {s}  {prompt[s]}\n" for s in removed)
    assert run("diff", "1", "2", "-d", "d", "--store", built).stdout == default
    assert run("diff", "v1", "-d", "d", "--store", built).stdout == default  # NEW = latest
    assert run("diff", "2", "1", "-d", "d", "--store", built, "--limit", "1").stdout == (
        f"d: v2 -> v1: added 2, removed 2, unchanged 2\n  + {removed[0]}  {prompt[removed[0]]}\n"
        f"  - {added[0]}  {prompt[added[0]]}\n")
    assert run("diff", "2", "2", "-d", "d", "--store", built).stdout == \
        "d: v2 -> v2: added 0, removed 0, unchanged 4\n"


def test_diff_errors(built, tmp_path, write_numbered):
    assert fail("diff", "1", "7", "-d", "d", "--store", built) == "dataset 'd' has no version 7"
    assert fail("diff", "x", "-d", "d", "--store", built) == \
        "bad version 'x': use a number such as 2 or v2"
    assert fail("diff", "-d", "nope", "--store", built) == "no dataset 'nope' (known: d)"
    store = tmp_path / "one"
    run("ingest", write_numbered(tmp_path / "a.jsonl", [1]), "-d", "one", "--store", store)
    assert fail("diff", "-d", "one", "--store", store) == \
        "dataset 'one' has one version; name two to compare"


def test_show_samples_paging_and_search(built, numbered_id):
    assert run("show", "-d", "d", "--store", built, "--limit", "2").stdout == (
        f"d v2: 4 samples (showing 1-2 of 4)\n"
        f"- {numbered_id(2)} n=2\n    prompt:   prompt 2\n    response: answer 2\n"
        f"- {numbered_id(3)} n=3\n    prompt:   prompt 3\n    response: answer 3\n")
    assert run("show", "-d", "d", "--store", built, "-v", "1", "--offset", "3").stdout == (
        f"d v1: 4 samples (showing 4-4 of 4)\n- {numbered_id(3)} n=3\n    prompt:   prompt 3\n"
        f"    response: answer 3\n")
    assert run("show", "-d", "d", "--store", built, "--search", "ANSWER 5").stdout == (
        f"d v2: 1 samples matching 'ANSWER 5'\n"
        f"- {numbered_id(5)} n=5\n    prompt:   prompt 5\n    response: answer 5\n")


def test_show_search_is_literal_text(tmp_path):
    """% and _ are characters to find, not LIKE wildcards (the old CLI matched every row)."""
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"prompt": p, "response": "r"}
                       for p in ("100% sure", "snake_case", "plain", "a!b")])
    store = tmp_path / "s"
    run("ingest", path, "-d", "d", "--store", store, "-q")
    def prompts(text):
        out = run("show", "-d", "d", "--store", store, "--search", text).stdout
        return [line.split("prompt:")[1].strip() for line in out.splitlines() if "prompt:" in line]
    assert prompts("%") == ["100% sure"]
    assert prompts("_") == ["snake_case"]
    assert prompts("e_c") == ["snake_case"]
    assert prompts("a!b") == ["a!b"]
    assert prompts("p%n") == []


def test_show_quarantine(built):
    out = run("show", "-d", "d", "--store", built, "-v", "1", "--quarantine").stdout
    assert out == ("d v1: 1 quarantined rows\n"
                   "  v1.jsonl:5: missing field 'response': {\"prompt\": 1}\n")
    assert run("show", "-d", "d", "--store", built, "--quarantine").stdout == \
        "d v2: 0 quarantined rows\n"
    assert fail("show", "-d", "d", "--store", built, "-v", "3") == "dataset 'd' has no version 3"


def test_show_quarantine_pages_searches_and_says_when_cut(tmp_path):
    """--offset and --search apply to quarantined rows, and a cut list says so."""
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [*({"prompt": f"p{i}"} for i in range(12)),
                       '{"prompt": "x", "response": "y"}', "not json_"])
    store = tmp_path / "s"
    run("ingest", path, "-d", "d", "--store", store, "-q")
    out = run("show", "-d", "d", "--store", store, "--quarantine").stdout.splitlines()
    assert out[0] == "d v1: 13 quarantined rows (showing 1-10 of 13)"
    assert [line.split(":")[1] for line in out[1:]] == [str(i) for i in range(1, 11)]
    out = run("show", "-d", "d", "--store", store, "--quarantine", "--offset", "11").stdout
    assert out.splitlines() == [
        "d v1: 13 quarantined rows (showing 12-13 of 13)",
        "  q.jsonl:12: missing field 'response': {\"prompt\": \"p11\"}",
        "  q.jsonl:14: malformed JSON: Expecting value: not json_"]
    out = run("show", "-d", "d", "--store", store, "--quarantine", "--search", "_").stdout
    assert out.splitlines() == [
        "d v1: 1 quarantined rows matching '_'",
        "  q.jsonl:14: malformed JSON: Expecting value: not json_"]
    out = run("show", "-d", "d", "--store", store, "--quarantine", "--search", "p1").stdout
    assert out.splitlines()[0] == "d v1: 3 quarantined rows matching 'p1'"


def test_scoring_options_are_checked_before_a_model_loads(built):
    assert fail("score", "utility", "-d", "d", "--store", built, "--hubs", "-1") == \
        "--hubs must be 'auto' or an integer >= 0 (0: off), got -1"
    assert fail("select", "-d", "d", "--store", built, "--hubs", "many") == \
        "--hubs must be 'auto' or an integer >= 0 (0: off), got 'many'"
    assert fail("select", "-d", "d", "--store", built, "--batch-size", "0") == \
        "--batch-size must be a positive integer"


def test_dualsft_options_reach_the_stage_and_are_checked_first(built, monkeypatch):
    from curator import stages
    from curator.config import GradientOptions

    assert fail("select", "-d", "d", "--store", built, "--method", "gast",
                "--warmup-steps", "3") == \
        "the DualSFT options apply to method dualsft only (method is gast)"
    assert fail("select", "-d", "d", "--store", built, "--method", "dualsft",
                "--grad-eta", "0") == "--grad-eta must be a finite number > 0, got 0.0"
    assert fail("select", "-d", "d", "--store", built, "--method", "dualsft",
                "--mask-spread", "2") == "--mask-spread must be a number in [0, 1], got 2.0"
    seen = []

    def fake_select_stage(store, dataset, spec, **kwargs):
        seen.append(spec)
        raise ValueError("stopped before scoring")

    monkeypatch.setattr(stages, "select_stage", fake_select_stage)
    assert fail("select", "-d", "d", "--store", built, "--method", "dualsft",
                "--warmup-steps", "4", "--grad-eta", "1e-4", "--lambda-new", "0.5",
                "--lambda-prior", "2", "--tau", "1.5", "--mask-rank", "abs",
                "--mask-spread", "0.25", "--grad-normalize", "unit") == "stopped before scoring"
    assert seen[0].gradient == GradientOptions(4, 1e-4, 0.5, 2.0, 1.5, "abs", 0.25, "unit")
    fail("select", "-d", "d", "--store", built, "--method", "dualsft")
    assert seen[1].gradient == GradientOptions()
    assert seen[1].gradient.warmup_steps > 0 and seen[1].gradient.normalize == "none"


def test_a_locked_store_fails_with_one_line(tmp_path, monkeypatch):
    import subprocess
    import sys

    run("init", "--store", tmp_path / "s")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); sys.stdin.readline()", str(tmp_path / "s" / "curator.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("CURATOR_LOCK_TIMEOUT", "0.2")
        assert fail("versions", "-d", "d", "--store", tmp_path / "s") == (
            f"store {tmp_path / 's'} is busy: another process has held it for more than 0.2 s "
            "(set CURATOR_LOCK_TIMEOUT to wait longer)")
    finally:
        holder.kill()
        holder.wait()


# -- help and README ------------------------------------------------------------------------


def test_version_option():
    assert run("--version").stdout == "curator, version 0.1.0\n"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.stdout.startswith(f"Usage: curator {command} [OPTIONS]")
    first_line = main.commands[command].help.strip().splitlines()[0]
    assert first_line and first_line in " ".join(result.stdout.split())
    assert run(command, "-h").stdout == result.stdout


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_in_the_readme(command):
    if not README.exists():
        pytest.skip("README.md does not exist yet")
    assert re.search(rf"`curator {command}\b", README.read_text()), \
        f"`curator {command}` is not mentioned in README.md"


def test_top_level_help_lists_every_command():
    out = run("--help").stdout
    for command in main.commands:
        assert re.search(rf"^  {command}\b", out, re.M), command


def test_choices_come_from_the_vocabulary():
    from curator.cli import main
    from curator.vocabulary import EXPORT_FORMATS, METHODS, OPTIMIZERS, STAGES

    select = main.commands["select"]
    choices = {p.name: tuple(p.type.choices) for p in select.params
               if hasattr(p.type, "choices")}
    assert choices["method"] == METHODS and choices["stage"] == STAGES
    assert choices["optimizer"] == OPTIMIZERS
    export = main.commands["export"]
    assert any(tuple(getattr(p.type, "choices", ())) == EXPORT_FORMATS for p in export.params)


# -- eval ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_qwen(tmp_path_factory):
    """A tiny Qwen2 saved as a model folder, and its greedy answers to two prompts."""
    from curator.records import Sample
    from curator.testing import tiny_loaded_model
    from curator.training.evaluate import generate_greedy

    path = tmp_path_factory.mktemp("tiny-qwen")
    lm = tiny_loaded_model("qwen2", seed=0)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    prompts = ["What is 2 + 2?", "Name a colour."]
    answers = generate_greedy(lm, [Sample.from_pair(p, "x") for p in prompts], 4)
    return path, prompts, answers


def test_eval_exact_match(saved_qwen, tmp_path):
    path, prompts, answers = saved_qwen
    data = tmp_path / "heldout.jsonl"
    # the first reference is the model's own greedy answer, the second is not
    write_jsonl(data, [{"prompt": p, "response": r}
                       for p, r in zip(prompts, [answers[0], "not this"], strict=True)])
    out = run("eval", "--model", path, "--data", data, "--exact-match",
              "--max-new-tokens", "4").stdout
    lines = out.splitlines()
    assert re.fullmatch(r"answer loss \d+\.\d{4} on 2 samples \(.*\)", lines[0])
    assert lines[1] == "exact match 0.5000 (1/2; greedy, at most 4 new tokens)"
    # a pattern that finds nothing in the generations: no hits
    out = run("eval", "--model", path, "--data", data, "--exact-match", "--max-new-tokens",
              "4", "--answer-pattern", "#### (.*)").stdout
    assert out.splitlines()[1] == ("exact match 0.0000 (0/2; greedy, at most 4 new tokens, "
                                   "answers by '#### (.*)')")


def test_eval_tokens(saved_qwen, tmp_path):
    """--eval-tokens picks the loss the library computes: the answer's own tokens by
    default, the whole response (end-of-turn tokens included) with 'response'."""
    from curator.models import load_model
    from curator.records import Sample
    from curator.training.evaluate import eval_loss

    path, prompts, _ = saved_qwen
    data = tmp_path / "heldout.jsonl"
    rows = [(prompts[0], "four"), (prompts[1], "a deep blue")]
    write_jsonl(data, [{"prompt": p, "response": r} for p, r in rows])
    lm = load_model(str(path), dtype="fp32")
    samples = [Sample.from_pair(p, r) for p, r in rows]
    for tokens in ("answer", "response"):
        args = () if tokens == "answer" else ("--eval-tokens", tokens)
        line = run("eval", "--model", path, "--data", data, *args).stdout.splitlines()[0]
        assert line == (f"{tokens} loss {eval_loss(lm, samples, tokens=tokens):.4f} "
                        f"on 2 samples ({lm.name})")
    bad = run("eval", "--data", data, "--eval-tokens", "prompt", ok=False)
    assert bad.exit_code == 2 and "'prompt' is not one of 'answer', 'response'" in bad.stderr


def test_eval_option_errors(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert "not a valid regex" in fail("eval", "--data", data, "--exact-match",
                                       "--answer-pattern", "#### (.*")
    assert fail("eval", "--data", data, "--answer-pattern", "x") == \
        "--answer-pattern needs --exact-match"
