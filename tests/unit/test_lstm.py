"""ProjectedLstm's two paths (nn.LSTM vs the exact clipped cell) and LstmStack's residuals."""
import pytest
import torch

from elmo_dist.model.lstm import LstmStack, ProjectedLstm

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

B, T, D, CELLS, PROJ = 3, 7, 5, 12, 4
# float64 checks of the math: unit roundoff 1.1e-16 x values <= ~6 x ~150 roundings (7 steps of 21-term
# sums) is ~1e-13; 1e-10 leaves 1000x, while a float32 rounding anywhere (~1e-8) or any real bug fails
F64 = dict(rtol=0, atol=1e-10)
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: twice float32's unit roundoff


def f32_bound(scale, steps, input_dim=D, cells=CELLS, proj=PROJ):
    """How far two float32 computations of an LSTM's outputs or state (or one and the exact value) may
    be apart: each step's gates sum input_dim + proj products and the projection sums `cells`, the
    recurrence carrying every step's roundings to the last; n roundings of relative size EPS32 / 2 on
    values <= `scale` on each side (the standard n*u bound) give EPS32 * scale * n between the two."""
    return EPS32 * scale * steps * (input_dim + proj + cells)


def pair(cell_clip=1e6, proj_clip=1e6, seed=0):
    torch.manual_seed(seed)
    fast = ProjectedLstm(D, CELLS, PROJ, None, None).double()
    slow = ProjectedLstm(D, CELLS, PROJ, cell_clip, proj_clip).double()
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def initial_state(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, B, PROJ, generator=g, dtype=torch.float64),
            torch.randn(1, B, CELLS, generator=g, dtype=torch.float64))


def run(module, x, state):
    x = x.clone().requires_grad_(True)
    st = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    module.zero_grad()
    out, (h, c) = module(x, st)
    # a loss that touches outputs and both final states with different weights
    g = torch.Generator().manual_seed(5)
    loss = ((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
            + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
            + (c * torch.randn(c.shape, generator=g, dtype=c.dtype)).sum())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    grads["x"] = x.grad
    if st is not None:
        grads["h0"], grads["c0"] = st[0].grad, st[1].grad
    return out.detach(), h.detach(), c.detach(), grads


def test_paths_are_selected_by_clipping():
    assert not ProjectedLstm(D, CELLS, PROJ, None, None).clipped
    assert ProjectedLstm(D, CELLS, PROJ, 3.0, None).clipped
    assert ProjectedLstm(D, CELLS, PROJ, None, 3.0).clipped
    m = ProjectedLstm(D, CELLS, PROJ, None, None)
    assert {n for n, _ in m.named_parameters()} == {
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0", "lstm.weight_hr_l0"}
    assert m.lstm.weight_hr_l0.shape == (PROJ, CELLS)


@pytest.mark.parametrize("with_state", [False, True])
def test_fast_path_equals_clipped_cell_with_huge_clips(with_state):
    fast, slow = pair()
    x = torch.randn(B, T, D, dtype=torch.float64)
    state = initial_state() if with_state else None
    of, hf, cf, gf = run(fast, x, state)
    os_, hs, cs, gs = run(slow, x, state)
    assert of.shape == (B, T, PROJ)
    assert hf.shape == (1, B, PROJ) and cf.shape == (1, B, CELLS)
    torch.testing.assert_close(of, os_, **F64)
    torch.testing.assert_close(hf, hs, **F64)
    torch.testing.assert_close(cf, cs, **F64)
    assert torch.equal(hf[0], of[:, -1])
    assert gf.keys() == gs.keys()
    assert len(gf) == 5 + 1 + (2 if with_state else 0)
    for k in gf:
        torch.testing.assert_close(gf[k], gs[k], **F64, msg=k)  # gradients <= ~3: the same margin
        assert gf[k].abs().sum() > 0, k


def test_fast_and_clipped_agree_in_float32_too():
    torch.manual_seed(3)
    fast = ProjectedLstm(D, CELLS, PROJ, None, None)
    slow = ProjectedLstm(D, CELLS, PROJ, 1e6, 1e6)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(B, T, D)
    state = (torch.randn(1, B, PROJ), torch.randn(1, B, CELLS))
    with torch.no_grad():
        a, (ha, ca) = fast(x, state)
        b, (hb, cb) = slow(x, state)
    # nn.LSTM's kernel and the clipped cell's ops round differently: within float32's rounding
    torch.testing.assert_close(a, b, rtol=0, atol=f32_bound(float(a.abs().max()), T))
    torch.testing.assert_close(ca, cb, rtol=0, atol=f32_bound(float(ca.abs().max()), T))


def test_state_carries_over_between_windows():
    """Two windows run with the carried state equal one window of twice the length (both paths)."""
    for clip in (None, 1e6):
        torch.manual_seed(0)
        m = ProjectedLstm(D, CELLS, PROJ, clip, clip).double()
        x = torch.randn(B, 2 * T, D, dtype=torch.float64)
        whole, (h, c) = m(x)
        first, s = m(x[:, :T])
        second, (h2, c2) = m(x[:, T:], s)
        torch.testing.assert_close(torch.cat([first, second], 1), whole, **F64)
        torch.testing.assert_close(h2, h, **F64)
        torch.testing.assert_close(c2, c, **F64)


def scaled_pair(cell_clip, proj_clip):
    fast, slow = pair(cell_clip, proj_clip, seed=2)
    # larger weights than the default init, so that the clips are reached
    with torch.no_grad():
        for m in (fast, slow):
            m.lstm.weight_ih_l0.mul_(8)
            m.lstm.bias_ih_l0.add_(1.5)  # positive forget/input gates: cells grow beyond 1
            m.lstm.weight_hr_l0.mul_(6)
    return fast, slow


def test_small_clips_really_clip():
    fast, slow = scaled_pair(cell_clip=0.5, proj_clip=0.3)
    x = torch.randn(B, T, D, dtype=torch.float64)
    out_f, (hf, cf) = fast(x)
    out_s, (hs, cs) = slow(x)
    # unclipped, the values go beyond the clips
    assert cf.abs().max() > 0.5 and out_f.abs().max() > 0.3
    assert cs.abs().max() <= 0.5
    assert out_s.abs().max() <= 0.3 and hs.abs().max() <= 0.3
    # and the clips are reached, not just respected by chance
    assert torch.isclose(cs.abs().max(), torch.tensor(0.5, dtype=torch.float64))
    assert torch.isclose(out_s.abs().max(), torch.tensor(0.3, dtype=torch.float64))
    assert not torch.allclose(out_f, out_s, atol=1e-3)


def test_cell_clip_alone_and_proj_clip_alone():
    x = torch.randn(B, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fast, cell_only = scaled_pair(cell_clip=0.5, proj_clip=None)
    _, (_, c) = cell_only(x)
    assert c.abs().max() <= 0.5
    out_f, _ = fast(x)
    out_c, _ = cell_only(x)
    assert not torch.allclose(out_f, out_c, atol=1e-3)
    _, proj_only = scaled_pair(cell_clip=None, proj_clip=0.3)
    out_p, (h, c) = proj_only(x)
    assert out_p.abs().max() <= 0.3
    assert c.abs().max() > 0.5  # the cell is free


def test_clipped_gradient_is_zero_beyond_the_clip():
    _, slow = scaled_pair(cell_clip=None, proj_clip=1e-3)
    x = torch.randn(B, 1, D, dtype=torch.float64)
    out, _ = slow(x)
    out.sum().backward()
    # every projection output of a single step is saturated -> no gradient reaches the projection
    assert (out.abs() == 1e-3).all()
    assert slow.lstm.weight_hr_l0.grad.abs().max() == 0


class Reference(torch.nn.Module):
    """The clipped cell step by step in autograd ops (`ProjectedLstm.reference_forward`)."""

    def __init__(self, lstm: ProjectedLstm):
        super().__init__()
        self.inner = lstm

    def forward(self, x, state=None):
        return self.inner.reference_forward(x, state)


@pytest.mark.parametrize("clips", [(0.5, 0.3), (0.5, None), (None, 0.3)], ids=["both", "cell", "proj"])
@pytest.mark.parametrize("with_state", [False, True])
def test_the_fused_clipped_cell_equals_the_step_by_step_reference(clips, with_state):
    """Issue 16: `clipped_lstm` (hand-written backward) against autograd through the same cell,
    with the clips active: outputs, final state and every gradient, in float64."""
    _, slow = scaled_pair(*clips)
    x = torch.randn(B, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    state = initial_state() if with_state else None
    fused, ref = run(slow, x, state), run(Reference(slow), x, state)
    # float64: outputs and state <= ~5 through 7 steps of 21-term sums, rounded at 1.1e-16, are within
    # ~1e-13; gradients (<= ~6, through the same steps backwards) within 1e-10 relative. A float32
    # rounding anywhere (~1e-8) fails both
    for a, b in zip(fused[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert {k.replace("inner.", "") for k in ref[3]} == set(fused[3])
    for name, grad in ref[3].items():
        torch.testing.assert_close(fused[3][name.replace("inner.", "")], grad, rtol=1e-10, atol=1e-12, msg=name)
    # the clips are reached, or the test would not test them
    assert clips[0] is None or (ref[2].abs() == clips[0]).any()
    assert clips[1] is None or (ref[0].abs() == clips[1]).any()


def test_the_fused_clipped_cell_in_float32_and_under_bf16_autocast():
    """Issue 16: under autocast the recurrent matrix products run in bf16 (as cuDNN's LSTM does; in
    float32 they would miss a GPU's tensor cores) while the cell state stays float32. The result stays
    within bf16 rounding of the float32 cell, clips included: outputs, cell state and each gradient
    no further from float32's than the step-by-step autograd cell's under the same autocast (x2)."""
    torch.manual_seed(0)
    cell = ProjectedLstm(32, 256, 64, 3.0, 0.5)
    with torch.no_grad():  # so that both clips are reached
        cell.lstm.bias_ih_l0.add_(1.5)
        cell.lstm.weight_hr_l0.mul_(3)
    x = torch.randn(8, 20, 32)
    out, _ = cell(x)
    ref, (h_ref, c_ref) = cell.reference_forward(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=f32_bound(0.5, 20, 32, 256, 64))  # |out| <= the clip
    assert (ref.abs() == 0.5).any() and (c_ref.abs() == 3.0).any()
    out.sum().backward()
    ref_grads = {name: p.grad.clone() for name, p in cell.named_parameters()}
    cell.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the step-by-step cell: what bf16 costs anyway
        ref_bf16, (_, c_ref_bf16) = cell.reference_forward(x)
        ref_bf16.float().sum().backward()
    ref_bf16_grads = {name: p.grad.clone() for name, p in cell.named_parameters()}
    cell.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16, (h, c) = cell(x)
        out_bf16.float().sum().backward()
    assert (out_bf16.dtype, h.dtype, c.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    assert all(p.grad.dtype == torch.float32 for p in cell.parameters())
    # bf16 rounds every operand of the products by up to 2^-8 = 3.9e-3, so either cell is off by about
    # 2^-8 x sqrt(sum of the 256 squared terms) per step (~1e-2 here, 2% of the clip): a worst case from
    # |terms| alone (2 x 2^-8 x sum |m w| ~ 0.16) says nothing. So the bound is the step-by-step cell's
    # own bf16 error on this machine, x2 for rounding in other places; a wrong dtype or a lost clip fails
    def max_error(x, exact, reference):
        x, exact, reference = x.detach().float(), exact.detach(), reference.detach().float()
        return float((x - exact).abs().max()), 2 * float((reference - exact).abs().max())

    for got, bound in (max_error(out_bf16, ref, ref_bf16), max_error(c, c_ref, c_ref_bf16)):
        assert got <= bound, (got, bound)

    def error(grad, name):
        return float((grad - ref_grads[name]).norm() / ref_grads[name].norm())

    # the same for the gradients, relative to each norm; 1% (2.5 x bf16's 2^-8) where the step-by-step
    # cell happens to come closer
    for name, p in cell.named_parameters():  # each on its own: their norms differ by 100x
        assert error(p.grad, name) <= max(2 * error(ref_bf16_grads[name], name), 0.01), name


def stack(residual, n_layers=3, seed=0, clip=None):
    torch.manual_seed(seed)
    return LstmStack(D, CELLS, n_layers, clip, clip, residual=residual, dropout=0.5).double().eval()


@pytest.mark.parametrize("clip", [None, 3.0])
def test_residual_stack(clip):
    s = stack(True, clip=clip)
    x = torch.randn(B, T, D, dtype=torch.float64)
    outs, states = s(x)
    assert len(outs) == len(states) == 3
    l1, _ = s.layers[0](x)
    assert torch.allclose(outs[0], l1, atol=1e-12)  # no residual around the first layer
    l2, _ = s.layers[1](outs[0])
    assert torch.allclose(outs[1], l2 + outs[0], atol=1e-12)
    l3, _ = s.layers[2](outs[1])
    assert torch.allclose(outs[2], l3 + outs[1], atol=1e-12)
    assert not torch.allclose(outs[1], l2, atol=1e-3)


def test_stack_without_residual():
    s = stack(False)
    x = torch.randn(B, T, D, dtype=torch.float64)
    outs, _ = s(x)
    l2, _ = s.layers[1](outs[0])
    assert torch.allclose(outs[1], l2, atol=1e-12)


def test_stack_state_per_layer():
    s = stack(True)
    x = torch.randn(B, 2 * T, D, dtype=torch.float64)
    whole, _ = s(x)
    first, st = s(x[:, :T])
    second, _ = s(x[:, T:], st)
    for w, a, b in zip(whole, first, second):
        assert torch.allclose(torch.cat([a, b], 1), w, atol=1e-10)


def test_stack_dropout_only_in_training():
    s = stack(True)
    x = torch.randn(B, T, D, dtype=torch.float64)
    eval_out, _ = s(x)
    s.train()
    torch.manual_seed(0)
    train_out, _ = s(x)
    assert not torch.allclose(eval_out[-1], train_out[-1], atol=1e-3)
