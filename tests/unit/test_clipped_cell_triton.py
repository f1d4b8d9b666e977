"""The clipped cell's Triton kernels (issue 16), run on the CPU by Triton's interpreter
(TRITON_INTERPRET=1): the same results as the PyTorch ops in float32 and under bf16 autocast, with
the clips reached. `benchmarks/gpu_check.sh` runs them compiled on CUDA (tests/gpu/)."""
import os

import pytest
import torch

from elmo_dist.config import PretrainConfig, load
from elmo_dist.errors import ConfigError
from elmo_dist.model.clipped_cell import clipped_lstm
from elmo_dist.model.lstm import ProjectedLstm

pytest.importorskip("triton")
# the interpreter's sigmoid is numpy's exp, which overflows (to the right limit) for large negative inputs
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

B, T, CELLS, PROJ = 4, 9, 40, 8  # 40 cells: not a power of two, so the column mask is exercised
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: twice float32's unit roundoff


def f32_atol(exact: torch.Tensor, backward: bool) -> float:
    """How far the kernels' float32 result may be from the PyTorch ops' (the interpreter's numpy exp,
    and tanh as 2 sigmoid(2x) - 1, round differently from torch's): each step of the forward rounds
    a PROJ-term recurrent sum, a CELLS-term projection and ~6 elementwise operations, the recurrence
    carrying them through all T steps; a gradient adds, per step backwards, the 4 CELLS-term product
    into h, the PROJ- and CELLS-term ones through the projection, and the B x T-term sum of a weight's
    gradient. n roundings of EPS32 / 2 on values <= max|exact| on each side: EPS32 x n x max|exact|."""
    n = T * (PROJ + CELLS + 6) + ((T * (4 * CELLS + CELLS + PROJ) + B * T) if backward else 0)
    return EPS32 * n * float(exact.abs().max())


@pytest.fixture
def interpreted():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("for Triton's interpreter (conftest sets it without CUDA); tests/gpu/ runs the kernels on CUDA")


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(B, T, 4 * CELLS, generator=g), torch.randn(B, PROJ, generator=g),
            torch.randn(B, CELLS, generator=g), torch.randn(4 * CELLS, PROJ, generator=g),
            torch.randn(PROJ, CELLS, generator=g) / 2)


def run(kernel, clips, autocast=None):
    """Outputs, final state and the gradient of every input, under a loss touching all three."""
    gates_x, *rest = inputs()
    if autocast:  # as the model gives them: from a linear layer under autocast
        gates_x = gates_x.to(autocast)
    tensors = [t.requires_grad_(True) for t in (gates_x, *rest)]
    with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        out, h, c = clipped_lstm(*tensors, *clips, kernel=kernel)
    g = torch.Generator().manual_seed(5)
    loss = sum((x.float() * torch.randn(x.shape, generator=g)).sum() for x in (out, h, c))
    loss.backward()
    return [x.detach() for x in (out.float(), h.float(), c)] + [t.grad for t in tensors]


@pytest.mark.parametrize("clips", [(0.5, 0.3), (0.5, None), (None, 0.3)], ids=["both", "cell", "proj"])
def test_triton_kernels_equal_the_torch_ops(interpreted, clips):
    torch_ops, fused = run("torch", clips), run("triton", clips)
    for i, (name, a, b) in enumerate(zip(["out", "h_T", "c_T", "gates_x", "h0", "c0", "w_hh", "w_hr"], torch_ops,
                                         fused)):
        torch.testing.assert_close(b, a, rtol=0, atol=f32_atol(a, backward=i >= 3), msg=name)  # then gradients
    assert clips[0] is None or (torch_ops[2].abs() == clips[0]).any()  # the clips are reached
    assert clips[1] is None or (torch_ops[0].abs() == clips[1]).any()


def test_triton_kernels_under_bf16_autocast(interpreted):
    """bf16 products, float32 cell: as close to float32 as the PyTorch ops under the same autocast."""
    clips = (0.5, 0.3)
    ref, torch_bf16, fused = run("torch", clips), run("torch", clips, torch.bfloat16), \
        run("triton", clips, torch.bfloat16)

    def error(x, exact):
        return float((x - exact).norm() / exact.norm())

    # bf16's rounding (2^-8 = 3.9e-3 per operand) is measured, not bounded from the terms' sizes: the
    # PyTorch ops' own error under the same autocast on this machine, x2 for rounding in other places,
    # or 1% (2.5 x 2^-8) where the PyTorch ops happen to come closer
    for name, exact, a, b in zip(["out", "h_T", "c_T", "gates_x", "h0", "c0", "w_hh", "w_hr"], ref, torch_bf16, fused):
        assert error(b, exact) <= max(2 * error(a, exact), 0.01), name


def test_the_module_runs_the_kernel_it_is_given(interpreted, monkeypatch):
    """auto is the PyTorch ops off CUDA; triton off CUDA needs the interpreter; typos are errors."""
    from elmo_dist.model import clipped_cell_triton

    calls, real = [], clipped_cell_triton.forward_step
    monkeypatch.setattr(clipped_cell_triton, "forward_step", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(B, T, 6)
    ProjectedLstm(6, CELLS, PROJ, 0.5, 0.3, kernel="auto")(x)
    assert calls == []
    out, _ = ProjectedLstm(6, CELLS, PROJ, 0.5, 0.3, kernel="triton")(x)
    assert len(calls) == T and torch.isfinite(out).all()  # one launch per time step
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="runs on CUDA"):
        clipped_lstm(*inputs(), 0.5, 0.3, kernel="triton")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        clipped_lstm(*inputs(), 0.5, 0.3, kernel="tirton")


def test_config_refuses_triton_on_the_cpu():
    with pytest.raises(ConfigError, match="model.clipped_cell"):
        load(PretrainConfig, None, ["model.cell_clip=3", "model.clipped_cell=triton", "train.device=cpu"])
    with pytest.raises(ConfigError, match="model.clipped_cell"):
        load(PretrainConfig, None, ["model.clipped_cell=fused"])


@pytest.mark.parametrize("c_loss", ["sum", "transposed"])
def test_triton_kernels_take_strided_gradients(interpreted, c_loss):
    """The kernel reads c_T's gradient as dense rows, whatever strides autograd hands it: `c_T.sum()`
    gives an expanded one (stride 0), a loss on `c_T.t()` a transposed one."""
    grads, weight = {}, torch.randn(CELLS, B, generator=torch.Generator().manual_seed(3))
    for kernel in ("torch", "triton"):
        tensors = [t.requires_grad_(True) for t in inputs()]
        out, h, c = clipped_lstm(*tensors, 0.5, 0.3, kernel=kernel)
        c_term = c.sum() if c_loss == "sum" else (c.t() * weight).sum()
        (out.sum() + h.sum() + c_term).backward()
        grads[kernel] = [t.grad for t in tensors]
    for a, b in zip(grads["torch"], grads["triton"]):
        torch.testing.assert_close(b, a, rtol=0, atol=f32_atol(a, backward=True))
