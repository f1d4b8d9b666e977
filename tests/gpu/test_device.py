"""Correctness on the accelerator (issue 16), run by `benchmarks/gpu_check.sh` on a GPU.

The device comes from ELMO_DIST_CHECK_DEVICE (default cuda; without CUDA these tests skip). `make
test` runs `gpu_check.sh --device cpu`, which runs them on the CPU with tiny sizes, so that a typo
costs no device minute; the fp16 checks need CUDA and skip there.

Tolerances, and where they come from (u: a format's unit roundoff, the largest relative error of one
rounding; n: the roundings along a result's path, as counted in tests/conftest.py):
- bf16 keeps 8 significant bits, u = 2^-8 = 3.9e-3 on every operand autocast rounds. The loss passes
  about 5 rounded matrix-product stages in depth (char CNN, projection, the 2 LSTM layers' products,
  the softmax), 5 x 3.9e-3 = 2%: a loss within 2% of fp32's. fp16 keeps 11 bits, u = 2^-11 = 4.9e-4:
  the same 5 stages give 0.25%; 1% leaves 4x for what loss scaling and fp16's range add. The gradient
  goes back through those stages twice (~10 x 3.9e-3 = 4% relative error, cosine >= sqrt(1 - 0.04^2)
  = 0.999); cosine > 0.99 allows a relative error of up to 14%, and a wrong sign or a lost term fails.
- float32 on the device against the CPU: the same math with sums in other orders (other kernels,
  atomics). A worst case adds the n roundings (EPS32 x n, n in the thousands here, so ~1e-4 to 1e-3);
  rounding errors of two summation orders are independent, though, and grow like u sqrt(n) (about 3e-6
  for n = 2700). Each bound below says which it uses.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from elmo_dist.config import PretrainConfig, load
from elmo_dist.data.batching import WindowBatcher
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.model.bilm import BiLM
from elmo_dist.model.lstm import ProjectedLstm
from elmo_dist.train.evaluate import to_device

from conftest import REPO, TINY_OVERRIDES, run_cli

DEVICE = os.environ.get("ELMO_DIST_CHECK_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]
CUDA_ONLY = pytest.mark.skipif(DEVICE != "cuda", reason="fp16 needs CUDA")


def _model_and_batch(corpus_dir, *overrides: str):
    cfg = load(PretrainConfig, REPO / "configs/debug.yaml",
               [f"data.dir={corpus_dir}", *TINY_OVERRIDES, "model.dropout=0", *overrides])
    corpus = PreparedCorpus(cfg.data.dir, cfg.model.max_chars_per_token)
    torch.manual_seed(0)
    model = BiLM(cfg.model, len(corpus.vocab))
    batch = WindowBatcher(corpus, cfg.data.batch_size, cfg.data.unroll_steps, seed=0).next_batch()
    return model, batch


def _loss_and_grad(model, batch, device: str, dtype=None):
    model.zero_grad()
    torch.manual_seed(1)  # the same negatives for every run on one device
    with torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(to_device(batch, device))
        loss = (out["nll_fwd"] + out["nll_bwd"]).float() / out["count_fwd"]
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("clips", [[], ["model.cell_clip=3", "model.proj_clip=3"]], ids=["lstm", "clipped"])
@pytest.mark.parametrize("dtype,rel", [pytest.param(torch.bfloat16, 0.02, id="bf16"),
                                       pytest.param(torch.float16, 0.01, id="fp16", marks=CUDA_ONLY)])
def test_autocast_matches_fp32(grammar_corpus, dtype, rel, clips):
    """nn.LSTM (cuDNN on CUDA) and the clipped cell, whose recurrent products run in bf16/fp16 too."""
    model, batch = _model_and_batch(grammar_corpus, *clips)
    model = model.to(DEVICE)
    ref_loss, ref_grad = _loss_and_grad(model, batch, DEVICE)
    loss, grad = _loss_and_grad(model, batch, DEVICE, dtype)
    assert np.isfinite(loss) and torch.isfinite(grad).all()
    assert abs(loss - ref_loss) <= rel * ref_loss, (loss, ref_loss)  # ~5 rounded stages x u (module docstring)
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.99  # up to 14% relative error


def test_full_model_on_the_device_equals_the_cpu(grammar_corpus):
    """The char CNN on distinct tokens (gathered back per position), the LSTMs and the softmax: the
    device gives the CPU's exact loss (full softmax, so no sampled negatives differ)."""
    model, batch = _model_and_batch(grammar_corpus, "model.softmax=full")
    cpu_loss, cpu_grad = _loss_and_grad(model, batch, "cpu")
    dev_loss, dev_grad = _loss_and_grad(model.to(DEVICE), batch, DEVICE)
    # the loss: each token's NLL through n ~ 2700 roundings (f32_bound for 10 steps, the softmax), u sqrt(n)
    # ~ 3e-6 relative, and the mean over 160 tokens averages those further: 1e-5 (a worst case, EPS32 x n,
    # would be 3e-4)
    assert dev_loss == pytest.approx(cpu_loss, rel=1e-5)
    # a gradient sums 160 positions back through 10 steps of 2 layers, n ~ 10^4 (adagrad_f32_bound's
    # count): rtol 1e-3 is the worst case EPS32 x n; atol for gradients that cancel to ~0, whose error
    # is relative to their terms (<= ~1e-2), not to themselves
    torch.testing.assert_close(dev_grad.cpu(), cpu_grad, rtol=1e-3, atol=1e-5)


def test_sampled_softmax_on_the_device_equals_the_cpu():
    from elmo_dist.model.softmax import SharedSoftmax

    torch.manual_seed(0)
    softmax = SharedSoftmax("sampled", 5000, 32, n_samples=256)
    h, targets = torch.randn(64, 32), torch.randint(0, 5000, (64,))
    negatives = softmax.sample(torch.device("cpu"))
    cpu = softmax.train_nll(h, targets, negatives)
    dev = softmax.to(DEVICE).train_nll(h.to(DEVICE), targets.to(DEVICE), tuple(n.to(DEVICE) for n in negatives))
    # the worst case of tests/unit/test_softmax.py's nll_atol: 32-term logits (sum |h w| <= ~4) and a
    # log-sum-exp over 257 terms, EPS32 x (2 x 33 x 4 + 257 + |nll| <= 10) = 6e-5, under 1e-5 + 1e-5 |nll|
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-5, atol=1e-5)
    ids, _ = softmax.sample(torch.device(DEVICE))  # drawn on the device: in range, log-uniform (mostly small)
    assert ids.device.type == torch.device(DEVICE).type and 0 <= ids.min() and ids.max() < 5000
    assert (ids < 500).float().mean() > 0.5


@pytest.mark.parametrize("kernel", ["triton", "torch"])
def test_clipped_cell_on_the_device_equals_the_cpu_reference(kernel):
    """The Triton kernels (compiled on CUDA; interpreted on the CPU) and the PyTorch ops."""
    if kernel == "triton":
        pytest.importorskip("triton")
    torch.manual_seed(0)
    cell = ProjectedLstm(16, 64, 8, 0.5, 0.3, kernel=kernel)
    with torch.no_grad():  # so that both clips are reached
        cell.lstm.bias_ih_l0.add_(1.5)
        cell.lstm.weight_hr_l0.mul_(6)
    x = torch.randn(4, 12, 16)
    ref_out, (_, ref_c) = cell.reference_forward(x)
    ref_out.sum().backward()
    ref_grads = [p.grad.clone() for p in cell.parameters()]
    cell.zero_grad()
    dev = cell.to(DEVICE)
    out, _ = dev(x.to(DEVICE))
    out.sum().backward()
    assert (ref_out.abs() == 0.3).any() and (ref_c.abs() == 0.5).any()
    # worst cases (tests/unit/test_clipped_cell_triton.py's f32_atol): the outputs, <= the 0.3 clip, pass
    # 12 steps of 16 + 8 + 64-term sums, EPS32 x 1056 x 0.3 = 3.8e-5 <= 1e-5 + 1e-4 x 0.3; a gradient
    # adds 12 steps back (4 x 64 + 64 + 8 terms) and the 48 positions' sum, EPS32 x ~5000 = 6e-4 relative
    # (rtol 1e-3), atol for the gradients that cancel to ~0
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-5)
    for p, g in zip(dev.parameters(), ref_grads):
        torch.testing.assert_close(p.grad.cpu(), g, rtol=1e-3, atol=1e-4)


@CUDA_ONLY
def test_fp16_overflowing_steps_are_skipped_and_counted(tmp_path, grammar_corpus):
    from elmo_dist.train.trainer import Trainer

    cfg = load(PretrainConfig, REPO / "configs/debug.yaml",
               [f"data.dir={grammar_corpus}", f"train.run_dir={tmp_path / 'r'}", *TINY_OVERRIDES, "train.device=cuda",
                "dist.mixed_precision=fp16", "train.eval_every=0", "checkpoint.every=0"])
    trainer = Trainer(cfg)
    for _ in range(3):
        trainer.train_step(trainer.next_batch())
    scaler = trainer.accelerator.scaler
    scaler.update(1e30)  # the next step's scaled gradients overflow fp16
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(trainer.next_batch())
    assert trainer.fp16_skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_stop_and_resume_on_the_device_equals_an_uninterrupted_run(tmp_path, grammar_corpus):
    from safetensors.torch import load_file

    def pretrain(run, *extra):
        run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}", f"train.run_dir={run}",
                *TINY_OVERRIDES, f"train.device={DEVICE}", "train.max_steps=12", "checkpoint.every=6",
                "train.eval_every=0", *extra)

    pretrain(tmp_path / "a")
    pretrain(tmp_path / "b", "--stop-at-step", "6")
    pretrain(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-12" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-12" / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # bit for bit on the CPU; cuDNN's and atomics' reduction order may differ on a GPU from one run to the
    # next: each gradient then differs by ~u sqrt(n) ~ 6e-6 relative (n ~ 10^4 roundings), and Adagrad's
    # step lr g / sqrt(1 + sum g^2) by as much relative: ~lr |g| <= 0.2 x 0.05 (the norm clipped at 10
    # over ~5e4 weights) = 1e-2, so ~6e-8 a step, ~1e-6 over 12 steps: within 1e-5. (The worst case,
    # adagrad_f32_bound in tests/conftest.py, would allow ~1e-3.)
    assert diff <= (0.0 if DEVICE == "cpu" else 1e-5), diff
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 12
