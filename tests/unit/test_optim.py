"""The optimizer the trainer builds: its implementations agree, and the learning-rate schedule."""
from __future__ import annotations

import math

import pytest
import torch

from elmo_dist.config import OptimConfig
from elmo_dist.runtime.schedule import lr_at, scheduled_lr
from elmo_dist.train.optim import build_optimizer


def _train(cfg: OptimConfig, steps: int = 20) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(300, 64)), torch.nn.Parameter(torch.randn(64))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(steps)]
    opt = build_optimizer(cfg, params)
    for g in grads:
        for p, gp in zip(params, g):
            p.grad = gp.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("name,lr", [("adagrad", 0.2), ("adam", 1e-3)])
def test_fused_foreach_and_loop_make_the_same_update(name, lr):
    runs = {impl: _train(OptimConfig(name=name, lr=lr, implementation=impl)) for impl in ("loop", "foreach", "fused")}
    start = _train(OptimConfig(name=name, lr=lr), steps=0)
    steps, eps32 = 20, torch.finfo(torch.float32).eps
    for impl in ("foreach", "fused"):
        for a, b, s in zip(runs["loop"], runs[impl], start):
            assert (a - s).abs().max() > 1e-3  # the weights really moved
            # the kernels round differently: per step each forms the update in ~5 roundings of |update|
            # <= 3.2 lr (Adagrad's |g| / sqrt(1 + sum g^2) < 1; Adam's |m_hat| / sqrt(v_hat) <=
            # (1 - b1) / sqrt(1 - b2) = 3.2) and w - update may then round one ulp apart (EPS32 |w|,
            # |w| <= |w_0| + steps x 3.2 lr); over the steps that adds up to
            w_max = float(s.abs().max()) + steps * 3.2 * lr
            torch.testing.assert_close(a, b, rtol=0, atol=eps32 * steps * (w_max + 5 * 3.2 * lr))


def test_auto_is_the_fused_kernel_and_loop_is_not():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(OptimConfig(implementation="auto"), p).defaults["fused"] is True
    loop = build_optimizer(OptimConfig(implementation="loop"), p).defaults
    assert not loop["fused"] and loop["foreach"] is False


def test_adagrad_keeps_elmos_initial_accumulator():
    p = [torch.nn.Parameter(torch.zeros(4))]
    opt = build_optimizer(OptimConfig(name="adagrad", lr=0.2, adagrad_init_acc=1.0), p)
    p[0].grad = torch.full((4,), 2.0)
    opt.step()
    # sum = 1 + 2^2 = 5, so the step is lr * g / sqrt(5)
    torch.testing.assert_close(p[0].detach(), torch.full((4,), -0.2 * 2 / math.sqrt(5)))


def test_warmup_then_cosine_to_the_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 110) == pytest.approx(0.1) and lr_at(cfg, 9, 110) == pytest.approx(1.0)
    assert lr_at(cfg, 60, 110) == pytest.approx(0.55)  # half way: the mean of 1.0 and the 0.1 floor
    assert lr_at(cfg, 110, 110) == pytest.approx(0.1) and lr_at(cfg, 500, 110) == pytest.approx(0.1)
    assert lr_at(OptimConfig(lr=1.0, decay="linear"), 50, 100) == pytest.approx(0.5)


def test_fine_tuning_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    lrs = [scheduled_lr(3e-3, s, 100, warmup_steps=10, decay="cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(3e-4) and lrs[9] == pytest.approx(3e-3)  # warmup ends at the full rate
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[55] == pytest.approx(1.5e-3)
    assert scheduled_lr(3e-3, 100, 100, 10, "cosine", min_lr_ratio=0.1) == pytest.approx(3e-4)
    assert scheduled_lr(3e-3, 50, 100) == 3e-3  # no warmup, no decay: constant
