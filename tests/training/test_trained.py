"""`curator train` outputs follow the rule of every folder curator replaces (issue 28):
--force replaces only an output train wrote that nobody changed, a new model never sits
beside an old adapter, files follow the umask, and a dead writer's folders are cleaned."""

from __future__ import annotations

import json
import os
import stat

import pytest

pytest.importorskip("peft")

from curator.folders import PARTIAL  # noqa: E402
from curator.testing import tiny_loaded_model  # noqa: E402
from curator.training.trained import clean_dead_writes  # noqa: E402
from tests.training.test_lora import _cli, _gast_export  # noqa: E402


@pytest.fixture
def base_and_export(tmp_path):
    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base", _gast_export(tmp_path)


def test_force_over_a_lora_adapter_leaves_no_old_adapter(base_and_export, tmp_path):
    """train --lora then train --force kept adapter_config.json and
    adapter_model.safetensors beside the new model.safetensors."""
    base, export = base_and_export
    out = tmp_path / "t"
    old = os.umask(0o022)
    try:
        r = _cli("train", export, "--out", out, "--model", base, "--lora", "--steps", 2,
                 "--batch-size", 2)
        assert r.exit_code == 0, r.output
        assert (out / "adapter_config.json").is_file()
        r = _cli("train", export, "--out", out, "--model", base, "--force", "--steps", 1,
                 "--batch-size", 2)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not names & {"adapter_config.json",
                                                         "adapter_model.safetensors", PARTIAL}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "train" and manifest["lora"] is None
    assert set(manifest["files"]) == names - {"manifest.json"}
    for p in out.iterdir():  # safetensors was 0600 while the rest was 0644
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_refuses_an_output_somebody_changed_or_train_did_not_write(
        base_and_export, tmp_path, file_tree):
    base, export = base_and_export
    out = tmp_path / "t"
    r = _cli("train", export, "--out", out, "--model", base, "--steps", 1, "--batch-size", 2)
    assert r.exit_code == 0, r.output
    with (out / "config.json").open("a") as fh:
        fh.write(" ")
    before = file_tree(out)
    r = _cli("train", export, "--out", out, "--model", base, "--force", "--steps", 1)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        f"error: {out} holds files changed since curator wrote them (config.json); --force "
        "replaces only a previous `curator train` output")
    assert file_tree(out) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_text("mine")
    r = _cli("train", export, "--out", mine, "--model", base, "--force", "--steps", 1)
    assert r.output.strip().splitlines()[-1] == (
        f"error: {mine} is not a model curator's train wrote (no manifest.json); --force "
        "replaces only a previous `curator train` output")
    r = _cli("train", export, "--out", export, "--model", base, "--force", "--steps", 1)
    assert r.output.strip().splitlines()[-1] == (
        f"error: {export} is a curator export, not a model curator's train wrote; --force "
        "replaces only a previous `curator train` output")


def test_a_dead_writers_folders_are_put_back_or_removed(tmp_path, file_tree):
    out = tmp_path / "t"
    dead = f"{os.uname().nodename} 999999999 x\n"
    tmp = tmp_path / ".t.abcdef12"
    tmp.mkdir()
    (tmp / PARTIAL).write_text(dead)
    (tmp / "model.safetensors").write_text("half")
    old = tmp_path / ".t.abcdef12.old"   # killed between the two renames
    old.mkdir()
    (old / "model.safetensors").write_text("previous")
    live = tmp_path / ".t.12345678"      # another, live write: left alone
    live.mkdir()
    (live / PARTIAL).write_text(f"{os.uname().nodename} {os.getpid()}\n")
    clean_dead_writes(out)
    assert not tmp.exists() and not old.exists() and live.exists()
    assert file_tree(out) == {"model.safetensors": b"previous"}
