"""bilm-tf's clipped LSTM cell over a whole window, with a hand-written backward pass.

    out, h_T, c_T = clipped_lstm(gates_x, h0, c0, w_hh, w_hr, cell_clip=3.0, proj_clip=3.0)

The cell is the one bilm-tf builds with TF's `LSTMCell(num_units, num_proj, cell_clip, proj_clip)`
(gate order i, f, g, o as in PyTorch's `nn.LSTM`, whose weights it reads):

    gates = gates_x[t] + h[t-1] W_hh^T          (gates_x = x W_ih^T + b_ih + b_hh, for all t at once)
    c[t]  = clip(sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g), cell_clip)
    h[t]  = clip((sigmoid(o) * tanh(c[t])) W_hr^T, proj_clip)

Clipping inside the recurrence is why cuDNN's and PyTorch's LSTM kernels can't run it. Written as
autograd ops, one step records about fifteen small operations whose backward autograd then replays
one by one, several times the cost of `nn.LSTM` (docs/performance.md). Here the forward runs without recording, into
buffers allocated once per window, and the backward is the same chain rule written out by hand
(backpropagation through time): per step two matrix products and a few elementwise passes, with
the weight gradients of all steps summed in one matrix product each at the end. On CUDA each
step's gate arithmetic (about fifteen ops forward, thirty backward) runs instead as one Triton
kernel each way (`clipped_cell_triton`; `kernel="auto"`). The result equals
the step-by-step autograd cell (`ProjectedLstm.reference_forward`) within float rounding; the
clip's gradient is torch.clamp's (it passes where |x| <= clip, as TF's clip_by_value does).

Precision: the cell state, the gates and their elementwise arithmetic are float32 (float64 if an
input is) whatever the autocast context, since the recurrence accumulates over the window. Under
autocast the two recurrent matrix products take their operands in the autocast dtype (bf16/fp16,
accumulated in float32 by the matmul), as cuDNN's LSTM does: in float32 they would run on a GPU's
CUDA cores rather than its tensor cores, several times slower, and with `original`'s 4096 cells
they are a third of a training step's arithmetic. So under autocast the outputs and h_T come back
in the autocast dtype, c_T in float32; without autocast everything is float32. The gradients come
back in the inputs' dtypes. Not twice differentiable.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

KERNELS = ("auto", "triton", "torch")


class ClippedLstmFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_x, h0, c0, w_hh, w_hr, cell_clip, proj_clip, kernel):
        dtypes = [t.dtype for t in (gates_x, h0, c0, w_hh, w_hr)]
        device = gates_x.device.type
        wide = torch.float64 if torch.float64 in dtypes else torch.float32
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) and wide == torch.float32 \
            else wide
        fused = _use_triton(kernel, gates_x.device, wide)
        with torch.autocast(device, enabled=False):
            # the Triton kernel reads bf16 input gates as they are, widening them in registers
            gates_x = gates_x.contiguous() if fused else gates_x.to(wide)
            saved = _forward(gates_x, h0, c0.to(wide), w_hh.to(low), w_hr.to(low),
                             cell_clip, proj_clip, fused)
        cs, hs = saved[1], saved[4]
        ctx.save_for_backward(*saved)
        ctx.dtypes, ctx.fused = dtypes, fused
        return hs[1:].transpose(0, 1).contiguous(), hs[-1].clone(), cs[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h_last, d_c_last):
        saved = ctx.saved_tensors
        acts, hs = saved[0], saved[4]
        with torch.autocast(acts.device.type, enabled=False):
            grads = _backward(*saved, *(None if g is None else g.to(dt) for g, dt in
                                        ((d_out, hs.dtype), (d_h_last, hs.dtype), (d_c_last, acts.dtype))),
                              fused=ctx.fused)
        grads = [g.to(dt) for g, dt in zip(grads, ctx.dtypes)]
        return (*grads, None, None, None)


def clipped_lstm(gates_x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, w_hr: torch.Tensor,
                 cell_clip: float | None, proj_clip: float | None, kernel: str = "auto"):
    """One clipped projected LSTM layer over a window.

    gates_x [B, T, 4H] (input part of the gates, biases included), h0 [B, P], c0 [B, H],
    w_hh [4H, P], w_hr [P, H]; a clip of None means none. Returns (outputs [B, T, P], h_T [B, P],
    c_T [B, H]), differentiable with respect to every tensor argument. `kernel` runs each step's
    gate arithmetic as PyTorch ops (`torch`) or as one Triton kernel forward and one backward
    (`triton`, float32 only; `clipped_cell_triton`); `auto` is triton on CUDA when the triton
    package is installed. A ValueError names an unknown kernel.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got '{kernel}'")
    return ClippedLstmFunction.apply(gates_x, h0, c0, w_hh, w_hr, cell_clip, proj_clip, kernel)


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(kernel: str, device: torch.device, wide: torch.dtype) -> bool:
    if kernel == "triton":
        if wide != torch.float32:
            raise ValueError(f"the triton clipped cell runs in float32, got {wide}")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"the triton clipped cell runs on CUDA (or with TRITON_INTERPRET=1), got {device}")
        return True
    return kernel == "auto" and device.type == "cuda" and wide == torch.float32 and triton_installed()


def _forward(gates_x, h0, c0, w_hh, w_hr, cell_clip, proj_clip, fused):
    """The recurrence, without autograd: activations [T, B, 4H] (i, f, o after sigmoid, g after
    tanh), cells c[-1..T-1], tanh(c), sigmoid(o)*tanh(c), outputs h[-1..T-1], the two weights and the
    clip masks. c0 comes in the wide dtype, w_hh and w_hr in the matmul one, and gates_x in the wide
    one unless `fused` (the gate arithmetic as one Triton kernel per step, which widens it itself)."""
    b, steps, four_h = gates_x.shape
    cells, proj = four_h // 4, w_hr.shape[0]
    mixed = w_hh.dtype != c0.dtype
    wide, low = c0.new_empty, w_hh.new_empty
    acts, cs, tcs, ms, hs = wide(steps, b, four_h), wide(steps + 1, b, cells), wide(steps, b, cells), \
        low(steps, b, cells), low(steps + 1, b, proj)
    rec = low(b, four_h) if mixed or fused else None
    mask = torch.empty
    c_mask = mask(steps, b, cells, dtype=torch.bool, device=gates_x.device) if cell_clip is not None else None
    h_mask = mask(steps, b, proj, dtype=torch.bool, device=gates_x.device) if proj_clip is not None else None
    cs[0], hs[0] = c0, h0
    w_hh_t, w_hr_t = w_hh.t(), w_hr.t()
    if fused:
        from elmo_dist.model import clipped_cell_triton as triton_cell
    for t in range(steps):
        if fused:
            triton_cell.forward_step(gates_x[:, t], torch.mm(hs[t], w_hh_t, out=rec), cs[t], acts[t], cs[t + 1],
                                     tcs[t], ms[t], None if c_mask is None else c_mask[t], cell_clip)
        else:
            _gates_torch(gates_x[:, t], hs[t], w_hh_t, rec, cs, t, acts[t], tcs[t], ms[t], c_mask, cell_clip)
        h = torch.mm(ms[t], w_hr_t, out=hs[t + 1])
        if h_mask is not None:
            torch.le(h.abs(), proj_clip, out=h_mask[t])
            h.clamp_(-proj_clip, proj_clip)
    return acts, cs, tcs, ms, hs, w_hh, w_hr, c_mask, h_mask


def _gates_torch(gx_t, h_prev, w_hh_t, rec, cs, t, a, tc, m, c_mask, cell_clip):
    """One step's gates, cell and m = o * tanh(c) as PyTorch ops, into the step's buffers (a is
    acts[t]; cs[t + 1] gets the cell; rec is None unless the product runs in a narrower dtype)."""
    cells = cs.shape[-1]
    h2, h3 = 2 * cells, 3 * cells
    if rec is not None:  # the product in the matmul dtype, added to the input gates in the wide one
        torch.add(gx_t, torch.mm(h_prev, w_hh_t, out=rec), out=a)
    else:
        torch.addmm(gx_t, h_prev, w_hh_t, out=a)
    a[:, :h2].sigmoid_()
    a[:, h2:h3].tanh_()
    a[:, h3:].sigmoid_()
    c = torch.mul(a[:, cells:h2], cs[t], out=cs[t + 1]).addcmul_(a[:, :cells], a[:, h2:h3])
    if c_mask is not None:
        torch.le(c.abs(), cell_clip, out=c_mask[t])
        c.clamp_(-cell_clip, cell_clip)
    torch.mul(a[:, h3:], torch.tanh(c, out=tc), out=m)


def _backward(acts, cs, tcs, ms, hs, w_hh, w_hr, c_mask, h_mask, d_out, d_h_last, d_c_last, fused):
    """Backpropagation through time: gradients for (gates_x, h0, c0, w_hh, w_hr). The elementwise
    chain runs in acts' (wide) dtype; what feeds a matrix product is kept in hs' (matmul) dtype."""
    steps, b, four_h = acts.shape
    mixed = hs.dtype != acts.dtype
    d_gates, d_h_pre = torch.empty_like(acts, dtype=hs.dtype), torch.empty_like(hs[1:])
    scratch = torch.empty_like(acts[0]) if mixed and not fused else None
    dh = torch.zeros_like(hs[0]) if d_h_last is None else d_h_last.clone()
    dc = torch.zeros_like(cs[0]) if d_c_last is None else d_c_last.clone(memory_format=torch.contiguous_format)
    if fused:
        from elmo_dist.model import clipped_cell_triton as triton_cell
    for t in range(steps - 1, -1, -1):
        dhp = d_h_pre[t].copy_(dh) if d_out is None else torch.add(dh, d_out[:, t], out=d_h_pre[t])
        if h_mask is not None:
            dhp.mul_(h_mask[t])
        dm, mask = dhp @ w_hr, None if c_mask is None else c_mask[t]
        if fused:
            triton_cell.backward_step(acts[t], cs[t], tcs[t], dm, dc, mask, d_gates[t])
        else:
            dc = _gates_backward_torch(acts[t], cs[t], tcs[t], dm, dc, mask, scratch if mixed else d_gates[t])
            if mixed:
                d_gates[t].copy_(scratch)
        dh = d_gates[t] @ w_hh
    flat = steps * b
    d_w_hh = d_gates.reshape(flat, four_h).t() @ hs[:-1].reshape(flat, -1)
    d_w_hr = d_h_pre.reshape(flat, -1).t() @ ms.reshape(flat, -1)
    return d_gates.transpose(0, 1), dh, dc, d_w_hh, d_w_hr


def _gates_backward_torch(a, c_prev, tc, dm, dc, mask, dg):
    """One step back through the gate arithmetic as PyTorch ops: the gates' gradients into dg
    [B, 4H]; returns the gradient of c_prev (dc is updated on the way)."""
    cells = c_prev.shape[-1]
    h2, h3 = 2 * cells, 3 * cells
    i, f, g, o = a[:, :cells], a[:, cells:h2], a[:, h2:h3], a[:, h3:]
    # m = o * tanh(c): into o's pre-activation, and into c (on top of c[t+1]'s share)
    torch.mul(dm, tc, out=dg[:, h3:]).mul_(o * (1 - o))
    dc.addcmul_(dm * o, 1 - tc * tc)
    if mask is not None:
        dc.mul_(mask)
    # c = f * c[t-1] + i * g
    torch.mul(dc, g, out=dg[:, :cells]).mul_(i * (1 - i))
    torch.mul(dc, c_prev, out=dg[:, cells:h2]).mul_(f * (1 - f))
    torch.mul(dc, i, out=dg[:, h2:h3]).mul_(1 - g * g)
    return dc * f
