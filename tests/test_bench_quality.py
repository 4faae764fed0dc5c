"""bench/quality.py: the sizing contract, the signals, and a tiny end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
from quality_data import DATA_ROOT, Row  # noqa: E402


def test_default_and_quick_fit_their_time_budgets():
    default = quality.estimate_seconds(quality.parse_args([]))
    quick = quality.estimate_seconds(quality.parse_args(["--quick"]))
    assert default["total"] <= 90 * 60 and quick["total"] <= 20 * 60
    # the docstring's arithmetic: 30 runs x 10 steps x 8 s; 9 runs x 8 steps x 8 s
    assert default["fine-tuning"] == pytest.approx(30 * 10 * 8)
    assert quick["fine-tuning"] == pytest.approx(9 * 8 * 8)
    assert default["gradient selections"] == pytest.approx(2 * 7 * 150 * 79 * 3 / 650)
    # every method does not fit: the docstring says so and the default leaves two out
    assert quality.estimate_seconds(quality.parse_args(["--methods", "all"]))["total"] \
        > 90 * 60


def test_options():
    args = quality.parse_args(["--methods", "delift"])
    assert args.methods == ["random", "delift"]          # the baseline is always there
    assert args.tasks == ["t0", "em"] and args.seeds == 3 and args.eval_size == 200
    quick = quality.parse_args(["--quick"])
    assert quick.tasks == ["t0"] and quick.methods == ["random", "delift", "rds"]
    assert quick.stages == ["task"]
    with pytest.raises(SystemExit):
        quality.parse_args(["--methods", "nope"])


def test_signals_by_hand():
    def row(family: str, corrupt: bool = False) -> Row:
        return Row(f"p {family} {corrupt}", "r", "t0", family,
                   corruption="truncated" if corrupt else None)

    rows = {"a": row("sciq", True), "b": row("sciq"), "c": row("x", True), "d": row("y"),
            "e": row("y")}
    s = quality.signals(["a", "b"], list(rows), rows, "sciq", {"y"}, zero_gain=1)
    assert (s["n"], s["n_pool"]) == (2, 5)
    assert s["corrupt_share"] == 0.5 and s["corrupt_base"] == 0.4
    assert s["corrupt_ratio"] == pytest.approx(1.25)
    assert s["target_share"] == 1.0 and s["target_ratio"] == pytest.approx(2.5)
    assert s["new_family_share"] == 0.0 and s["new_family_base"] == 0.4
    assert s["zero_gain_share"] == 0.5


@pytest.mark.slow  # the whole benchmark end to end, twice: make test-slow
@pytest.mark.skipif(not (DATA_ROOT / "t0").exists(), reason="../shared/data is not present")
def test_tiny_end_to_end_and_resume(tmp_path, monkeypatch):
    argv = ["--model", "tiny", "--methods", "random", "delift", "--seeds", "2",
            "--pool-size", "30", "--eval-size", "6", "--em-eval-size", "6",
            "--target-size", "4", "--stages", "task", "--boot", "200",
            "--workdir", str(tmp_path / "w")]
    first = quality.main(argv)
    # base, random seeds 0 and 1 (trained once, evaluated on both tasks), DELIFT x 2 tasks
    # x 2 seeds
    assert first == {"trained": 7, "cached": 2, "failed": 0}
    report = (tmp_path / "w" / "quality.md").read_text()
    assert report.startswith("Command: `python bench/quality.py --model tiny")
    assert "## Outcome: task t0 (sciq)" in report
    assert "## Outcome: task em (sports_understanding)" in report
    assert "| DELIFT | 9 |" in report                      # 30% of 30 rows
    assert "EM: method - random [95% CI]" in report and "Status: **complete**" in report
    runs = [json.loads(p.read_text()) for p in (tmp_path / "w" / "runs").glob("*.json")]
    assert len(runs) == 7
    for run in runs:
        for eval_id, result in run["evals"].items():
            # t0 takes whole items (two sciq templates each) until at least 6 rows
            n = len(result["loss"])
            assert n == 6 if eval_id.startswith("em-") else 6 <= n <= 7
            assert len(result.get("hits", [0] * 6)) == 6
    # a rerun trains nothing: every run comes from the cache
    assert quality.main(argv) == {"trained": 0, "cached": 9, "failed": 0}
    # a method that fails is reported and leaves the others in place
    real = quality.select_one

    def select_one(args, store, lm, stage, method, *rest, **kw):
        if method == "rds":
            raise RuntimeError("boom")
        return real(args, store, lm, stage, method, *rest, **kw)

    monkeypatch.setattr(quality, "select_one", select_one)
    argv.insert(argv.index("delift") + 1, "rds")
    assert quality.main(argv) == {"trained": 0, "cached": 9, "failed": 2}
    report = (tmp_path / "w" / "quality.md").read_text()
    assert "Status: **complete, 2 failed**" in report
    assert "- task stage, t0, RDS+: RuntimeError: boom" in report
    assert "| DELIFT | 9 |" in report
