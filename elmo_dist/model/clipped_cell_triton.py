"""One Triton kernel for each time step's gate arithmetic in the clipped cell, forward and backward.

`clipped_cell` runs a step of bilm-tf's clipped LSTM as two matrix products plus the gate
arithmetic. As PyTorch ops that arithmetic is about fifteen kernels forward and thirty backward,
each a launch and a pass over [B, 4H] values in device memory; at `original`'s 4096 cells those
passes, not the products, would set the step's time on a GPU. Each kernel here does one step's
arithmetic in one pass (per row of the batch, a block of cell columns per program):

    forward   gates = gates_x[t] + rec            (rec = h[t-1] W_hh^T, from a matrix product)
              i, f, o = sigmoid(.), g = tanh(.);  c = clip(f c[t-1] + i g);  m = o tanh(c)
    backward  from dm (= dh W_hr, step t's share) and dc (from step t+1): d_gates[t] and dc for t-1

The formulas and their order are those of `clipped_cell._forward` and `_backward`, with tanh(x)
written as 2 sigmoid(2x) - 1 so that Triton's interpreter (TRITON_INTERPRET=1, on the CPU) runs the
same code: tests/unit/test_clipped_cell_triton.py checks both kernels against the PyTorch ops there,
and `benchmarks/gpu_check.sh` on CUDA. Activations and the cell state are float32; `rec`, `dm`, `m`
and `d_gates` may be bf16/fp16 (the matrix products' dtype under autocast).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _gate(gx, rec, ok):
    """A gate's pre-activation, input part plus recurrent part, widened to float32."""
    return tl.load(gx, mask=ok).to(tl.float32) + tl.load(rec, mask=ok).to(tl.float32)


@triton.jit
def _forward_kernel(gx, gx_row_stride, rec, c_prev, acts, c_out, tc_out, m_out, mask_out, clip, cells,
                    HAS_CLIP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < cells
    gx, rec, acts = gx + row * gx_row_stride + cols, rec + row * 4 * cells + cols, acts + row * 4 * cells + cols
    i = tl.sigmoid(_gate(gx, rec, ok))
    f = tl.sigmoid(_gate(gx + cells, rec + cells, ok))
    g = _tanh(_gate(gx + 2 * cells, rec + 2 * cells, ok))
    o = tl.sigmoid(_gate(gx + 3 * cells, rec + 3 * cells, ok))
    at = row * cells + cols
    c = f * tl.load(c_prev + at, mask=ok) + i * g
    if HAS_CLIP:
        tl.store(mask_out + at, tl.abs(c) <= clip, mask=ok)
        c = tl.minimum(tl.maximum(c, -clip), clip)
    tc = _tanh(c)
    tl.store(acts, i, mask=ok)
    tl.store(acts + cells, f, mask=ok)
    tl.store(acts + 2 * cells, g, mask=ok)
    tl.store(acts + 3 * cells, o, mask=ok)
    tl.store(c_out + at, c, mask=ok)
    tl.store(tc_out + at, tc, mask=ok)
    tl.store(m_out + at, (o * tc).to(m_out.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(acts, c_prev, tc, dm, dc, mask, d_gates, cells, HAS_CLIP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < cells
    acts, d_gates = acts + row * 4 * cells + cols, d_gates + row * 4 * cells + cols
    i, f = tl.load(acts, mask=ok), tl.load(acts + cells, mask=ok)
    g, o = tl.load(acts + 2 * cells, mask=ok), tl.load(acts + 3 * cells, mask=ok)
    at = row * cells + cols
    t, d_m = tl.load(tc + at, mask=ok), tl.load(dm + at, mask=ok).to(tl.float32)
    # m = o * tanh(c): into o's pre-activation, and into c (on top of c[t+1]'s share)
    d_o = (d_m * t) * (o * (1 - o))
    d_c = tl.load(dc + at, mask=ok) + (d_m * o) * (1 - t * t)
    if HAS_CLIP:
        d_c = tl.where(tl.load(mask + at, mask=ok) != 0, d_c, 0.0)
    # c = f * c[t-1] + i * g
    d_i = (d_c * g) * (i * (1 - i))
    d_f = (d_c * tl.load(c_prev + at, mask=ok)) * (f * (1 - f))
    d_g = (d_c * i) * (1 - g * g)
    out = d_gates.dtype.element_ty
    tl.store(d_gates, d_i.to(out), mask=ok)
    tl.store(d_gates + cells, d_f.to(out), mask=ok)
    tl.store(d_gates + 2 * cells, d_g.to(out), mask=ok)
    tl.store(d_gates + 3 * cells, d_o.to(out), mask=ok)
    tl.store(dc + at, d_c * f, mask=ok)


def _grid(rows: int, cells: int) -> tuple[tuple[int, int], int]:
    block = min(1024, triton.next_power_of_2(cells))
    return (rows, triton.cdiv(cells, block)), block


def forward_step(gx_t: torch.Tensor, rec: torch.Tensor, c_prev: torch.Tensor, acts_t: torch.Tensor,
                 c_out: torch.Tensor, tc_out: torch.Tensor, m_out: torch.Tensor, mask_out: torch.Tensor | None,
                 cell_clip: float | None) -> None:
    """One forward step, written into the given buffers: gx_t [B, 4H] float32 or bf16/fp16 (rows may
    be strided, columns contiguous: gates_x[:, t]), rec [B, 4H], c_prev [B, H] float32 -> acts_t [B, 4H] (i, f, o
    after sigmoid, g after tanh), c_out, tc_out [B, H] float32, m_out [B, H] (rec's dtype or
    float32), mask_out [B, H] bool (|c| <= clip before clipping; None without a cell clip)."""
    rows, cells = c_prev.shape
    grid, block = _grid(rows, cells)
    _forward_kernel[grid](gx_t, gx_t.stride(0), rec, c_prev, acts_t, c_out, tc_out, m_out,
                          c_out if mask_out is None else mask_out, float(cell_clip or 0.0), cells,
                          HAS_CLIP=cell_clip is not None, BLOCK=block)


def backward_step(acts_t: torch.Tensor, c_prev: torch.Tensor, tc: torch.Tensor, dm: torch.Tensor,
                  dc: torch.Tensor, mask: torch.Tensor | None, d_gates_t: torch.Tensor) -> None:
    """One backward step: d_gates_t [B, 4H] (gradients of the gates' pre-activations) from the saved
    acts_t [B, 4H], c_prev and tc [B, H], the incoming dm [B, H] and dc [B, H] float32, which is
    updated in place to the gradient of c_prev (through the forget gate)."""
    rows, cells = c_prev.shape
    grid, block = _grid(rows, cells)
    _backward_kernel[grid](acts_t, c_prev, tc, dm, dc, dc if mask is None else mask, d_gates_t, cells,
                           HAS_CLIP=mask is not None, BLOCK=block)
