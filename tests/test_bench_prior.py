"""bench/quality_prior.py: its mixed-precision contexts train and evaluate what they say."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import quality_prior  # noqa: E402


def _step_twice(ctx_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, one SGD step, forward again, all inside one context from ``ctx_factory``."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    lm = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    x = torch.ones(1, 4)
    with ctx_factory(lm):
        before = lin(x)
        before.sum().backward()
        opt.step()
        after = lin(x)
    return before.float().detach(), after.float().detach()


def test_training_context_sees_each_step():
    # A bug fix: one cached autocast context over the whole training loop made every
    # forward read the bf16 cast of the weights before the first step.
    before, after = _step_twice(lambda lm: quality_prior.autocast(lm, training=True))
    # SGD with lr 1 on sum(Wx + b), x = ones: each output falls by 4 (W row) + 1 (bias)
    assert torch.allclose(after, before - 5.0, atol=0.05)


def test_evaluation_context_caches_the_casts():
    # The evaluation context keeps the cache (fixed weights, one cast each), so a weight
    # changed inside it is not seen: the reason training must not use it.
    before, after = _step_twice(lambda lm: quality_prior.autocast(lm))
    assert torch.equal(before, after)


def test_cpu_fp32_only():
    bf16 = SimpleNamespace(device=torch.device("cpu"), dtype=torch.bfloat16)
    assert not isinstance(quality_prior.autocast(bf16, training=True), torch.autocast)


def test_option_nlls_match_whole_sequence_forwards():
    # The evaluator's shared head, length-sorted groups and per-prompt caches give each
    # option's summed NLL as one plain forward of prompt + option does, in the items' order.
    from curator.testing import tiny_loaded_model

    lm = tiny_loaded_model("llama", seed=0)
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 60, (n,), generator=g).tolist()

    head = ids(6)
    items = [(head + ids(n), [ids(m) for m in opt_lens], 0)
             for n, opt_lens in ((9, (2, 3)), (5, (1, 4, 2)), (12, (3,)), (7, (2, 2)),
                                 (5, (5, 1)))]
    got = quality_prior.option_nlls(lm, items, group=2)
    with torch.inference_mode():
        for (prompt, opts, _), total in zip(items, got, strict=True):
            for o, value in zip(opts, total, strict=True):
                x = torch.tensor([prompt + o])
                logp = torch.log_softmax(lm.model(input_ids=x).logits[0, :-1].float(), -1)
                want = -logp[len(prompt) - 1:, :].gather(1, x[0, len(prompt):, None]).sum()
                assert abs(float(want) - value) < 1e-4 * max(1.0, abs(float(want)))


def test_common_head_stops_at_the_limit_and_the_first_difference():
    assert quality_prior._common_head([[1, 2, 3, 4], [1, 2, 3, 5]], 10) == (1, 2, 3)
    assert quality_prior._common_head([[1, 2, 3, 4], [1, 2, 3, 5]], 2) == (1, 2)
    assert quality_prior._common_head([[1, 2], [3, 2]], 5) == ()


@pytest.mark.slow
def test_tiny_run_on_two_workers_resumes_from_its_cache_on_one(tmp_path):
    # The runs two worker processes wrote are what one process finds and reuses: the same
    # keys, nothing trained twice, the same report numbers.
    argv = ["--model", "tiny", "--workdir", str(tmp_path), "--no-stages", "--arms",
            "oracle_clean", "oracle_dirty", "--train-seeds", "2"]
    assert quality_prior.main(argv + ["--workers", "2"]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 5  # 2 oracle-clean, 2 oracle-dirty, the base model
    stamps = {p.name: p.stat().st_mtime_ns for p in runs}
    first = (tmp_path / "quality_prior.md").read_text()
    assert quality_prior.main(argv + ["--workers", "1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == stamps
    second = (tmp_path / "quality_prior.md").read_text()
    def controls(report: str) -> str:  # the go/no-go table (the arms' table times selection)
        return report.split("## Go / no-go")[1].split("## Arms")[0]

    assert controls(first) == controls(second)


@pytest.mark.slow
def test_tiny_budget_curve_compares_each_budget_with_random_and_rds(tmp_path):
    # The curve's table: every budget (the main one included), each arm's mean loss, its
    # paired differences against random and RDS+ at that budget, and what it selected.
    argv = ["--model", "tiny", "--workdir", str(tmp_path), "--no-stages", "--arms",
            "random", "rds", "delift+both", "--train-seeds", "2", "--curve", "30%",
            "--workers", "1"]
    assert quality_prior.main(argv) == 0
    report = (tmp_path / "quality_prior.md").read_text()
    table = report.split("## Budget curve")[1].split("## AUC")[0]
    rows = [[c.strip() for c in r.strip().strip("|").split("|")]
            for r in table.splitlines() if r.startswith(("| 15%", "| 30%"))]
    assert [(r[0].split()[0], r[1]) for r in rows] == [
        (b, a) for b in ("15%", "30%")
        for a in ("random", "RDS+", "DELIFT + prior (drop auto, weight)")]
    for _budget, arm, loss, vs_random, vs_rds, acc, in_family, corrupted in rows:
        float(loss)
        assert int(in_family) >= int(corrupted) >= 0
        if arm == "random":  # nothing to pair it with
            assert vs_random == vs_rds == acc == ""
        elif arm == "RDS+":
            assert vs_random.startswith(("+", "-")) and vs_rds == ""
        else:
            assert vs_random.startswith(("+", "-")) and vs_rds.startswith(("+", "-"))


def test_the_dualsft_normalisation_arms_name_their_setting():
    # A bug fix: the "_unit" arm set what was then the default, so "unit over none" compared
    # one selection with itself (+0.0000 [+0.0000, +0.0000]). Each variant now names its
    # setting, and the isolating pair compares the default with the other one.
    args = SimpleNamespace(weight=1.0)
    spec = {arm: quality_prior.spec_for(arm, args, "15%")
            for arm in ("dualsft", "dualsft_raw", "dualsft_unit")}
    assert {s.method for s in spec.values()} == {"dualsft"}
    assert spec["dualsft_raw"].gradient.normalize == "none"
    assert spec["dualsft_unit"].gradient.normalize == "unit"
    # pairs that differ in their selection's spec (the others differ in scoring options or
    # in training, which select() and the trainer set by name)
    elsewhere = ("_gated", "_nll", "_pl2", "_masked", "random_")
    for arm, against, _ in quality_prior.ISOLATE:
        if any(m in arm or m in against for m in elsewhere):
            continue
        assert quality_prior.spec_for(arm, args, "15%") != \
            quality_prior.spec_for(against, args, "15%"), (arm, against)
