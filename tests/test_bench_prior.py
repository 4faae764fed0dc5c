"""bench/quality_prior.py: its mixed-precision contexts train and evaluate what they say."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

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
