"""An unreachable Ray address (--ray-address, RAY_ADDRESS) fails in one line within
CURATOR_RAY_TIMEOUT seconds (issue 28: Ray retried for minutes, printing warnings)."""

from __future__ import annotations

import time

import pytest

from tests.helpers import write_jsonl

pytest.importorskip("ray")

from curator.scoring.engine_errors import EngineUnavailable  # noqa: E402
from curator.scoring.ray_engine import RayEngine, wait_for_cluster  # noqa: E402

pytestmark = pytest.mark.slow  # Ray: waits out connection timeouts: make test-slow


def test_an_unreachable_address_fails_within_the_timeout(monkeypatch):
    monkeypatch.setenv("CURATOR_RAY_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable) as info:
        RayEngine(address="127.0.0.1:1").connect()
    assert time.monotonic() - t0 < 5
    assert str(info.value).startswith("cannot reach the Ray cluster at 127.0.0.1:1 within 1 s (")
    assert "\n" not in str(info.value)
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    with pytest.raises(EngineUnavailable, match="at ray://127.0.0.1:1 within 1 s"):
        RayEngine().connect()
    wait_for_cluster("auto", 0)  # no port: left to Ray


def test_the_cli_says_it_in_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from curator.cli import main
    from curator.ingestion.ingest import ingest
    from curator.store import Store
    from curator.testing import tiny_loaded_model

    lm = tiny_loaded_model("llama")
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"prompt": f"Q{i}?", "response": f"A{i}."} for i in range(6)]
    ingest(Store(tmp_path / "s"), write_jsonl(tmp_path / "d.jsonl", rows), "d")
    monkeypatch.setenv("CURATOR_RAY_TIMEOUT", "0.5")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["score", "utility", "-d", "d", "--store", str(tmp_path / "s"),
                                  "--model", str(tmp_path / "model"), "--k", "2",
                                  "--engine", "ray"])
    assert time.monotonic() - t0 < 60
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1].startswith(
        "error: cannot reach the Ray cluster at 127.0.0.1:1 within 0.5 s (")
