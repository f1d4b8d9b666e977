"""Training-step throughput of a flavour: tokens/s, ms/step, peak memory, analytic FLOPs per token and
MFU, with the data pipeline included and excluded (and the pipeline's own time per batch), and
optionally against the naive baseline.

    python -m benchmarks.bench_pretrain --flavour small --batch-size 128 --compare-naive
    python -m benchmarks.bench_pretrain --flavour original --precision bf16 --device cuda

The corpus is a generated Zipf text (100k words by default) prepared once into a temporary directory.
MFU counts the work actually done (the char CNN on the distinct tokens of a batch at its trimmed
width, the LSTMs, the sampled softmax), x3 for forward + backward, against the matrix-multiply rate
measured on the device at start-up (on CUDA in the run's precision, 8192-square), or --peak-tflops;
on a known GPU the MFU against its data-sheet peak is reported beside it.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit, gemm_gflops, gpu_peak_tflops, machine, peak_memory_mib, write_zipf_corpus
from benchmarks.naive import NaiveBiLM, naive_step
from elmo_dist.data.char_ids import PAD_CHAR


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--flavour", default="small", choices=["debug", "small", "medium", "original"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="run-config overrides, e.g. model.lstm_dim=512")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--unroll", type=int, default=20)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compare-naive", action="store_true", help="also time the straightforward baseline")
    p.add_argument("--compare-clip", type=float, metavar="CLIP",
                   help="also time the same model with cell and projection clipped at CLIP (the fused clipped cell, "
                        "and its step-by-step autograd reference), in alternating rounds on the same batches")
    p.add_argument("--no-dedup", action="store_true",
                   help="feed the char CNN every position of both directions at full width (the fast path off)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU (default: known GPUs / measured GEMM)")
    p.add_argument("--corpus-tokens", type=int, default=1_000_000)
    p.add_argument("--vocab", type=int, default=100_000)
    p.add_argument("--gemm-seconds", type=float, default=1.0, help="how long to time the GEMM rate")
    p.add_argument("--profile", metavar="FILE",
                   help="also profile a few steps (torch.profiler): the operator table to FILE, the busy time "
                        "and the top operators in the results")
    p.add_argument("--out", help="JSON file for the results")
    return p.parse_args(argv)


def build_trainer(args, work: Path):
    from elmo_dist.config import PretrainConfig, load
    from elmo_dist.data.prepare import PrepareOptions, prepare
    from elmo_dist.train.trainer import Trainer

    text = write_zipf_corpus(work / "corpus.txt", args.corpus_tokens, args.vocab)
    prepare(PrepareOptions(inputs=[str(text)], out=str(work / "prepared"), heldout_fraction=0.01))
    overrides = [f"model.flavour={args.flavour}", f"data.dir={work / 'prepared'}", f"train.run_dir={work / 'run'}",
                 f"data.batch_size={args.batch_size}", f"data.unroll_steps={args.unroll}",
                 f"train.device={args.device}", "train.eval_every=0", "checkpoint.every=0", "train.max_steps=1000000",
                 "logging.tensorboard=false", "logging.progress=lines", "logging.log_every=1000000",
                 f"dist.mixed_precision={'no' if args.precision == 'fp32' else args.precision}", *args.set]
    return Trainer(load(PretrainConfig, None, overrides))


def _timed(fn, steps: int, device: str) -> float:
    """Seconds per call, synchronised."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def flops_per_token(m, vocab: int, encoded_per_position: float, char_width: int) -> float:
    """Analytic training FLOPs per token position (forward x 3), both directions."""
    dim, cells = m.projection_dim, m.lstm_dim
    if m.encoder == "char_cnn":
        n_filters = sum(n for _, n in m.filters)
        conv = sum(2 * m.char_embed_dim * w * n * max(char_width - w + 1, 1) for w, n in m.filters)
        enc = conv + m.n_highway * 2 * n_filters * 2 * n_filters + 2 * n_filters * dim
    else:
        enc = 2 * m.word_embed_dim * dim
    lstm = 2 * m.n_layers * 2 * (4 * cells * dim + 4 * cells * dim + cells * dim)
    classes = m.n_negative_samples + 1 if m.softmax == "sampled" else vocab
    softmax = 2 * 2 * dim * classes
    return 3 * (encoded_per_position * enc + lstm + softmax)


def measure(args) -> dict:
    from elmo_dist.train.evaluate import to_device

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, Path(tmp))
        device = str(trainer.accelerator.device)
        next_batch = trainer.batcher.next_batch
        if args.no_dedup:
            width = trainer.cfg.model.max_chars_per_token
            next_batch = lambda: per_position(trainer.batcher.next_batch(), width)  # noqa: E731
        for _ in range(args.warmup):
            trainer.train_step(next_batch())
        with_data, model_only, batches = _step_times(trainer, next_batch, args.steps, device)
        data_s = _timed(next_batch, 5 * args.steps, "cpu")  # the host pipeline alone
        positions = args.batch_size * args.unroll
        uniq = float(np.mean([len(b["token_ids"]) for b in batches])) / positions
        width = int(np.mean([b["chars"].shape[1] for b in batches]))
        m, vocab = trainer.cfg.model, len(trainer.corpus.vocab)
        fast_width = min(m.max_chars_per_token, width - 1 + max(w for w, _ in m.filters))
        res = {"flavour": args.flavour, "device": device, "precision": args.precision,
               "batch": [args.batch_size, args.unroll],
               "dedup": not args.no_dedup, "overrides": args.set,
               "parameters": sum(p.numel() for p in trainer.model.parameters()), "vocab": vocab,
               "distinct_tokens_per_position": uniq, "char_columns": fast_width,
               "ms_per_step": model_only * 1e3, "ms_per_step_with_data": with_data * 1e3,
               "data_ms_per_batch": data_s * 1e3,
               "tokens_per_s": positions / model_only, "tokens_per_s_with_data": positions / with_data,
               "flops_per_token": flops_per_token(m, vocab, uniq, fast_width)}
        if args.compare_naive:
            res.update(_naive(trainer, batches, args, device, to_device))
        if args.compare_clip:
            res.update(_clip_costs(trainer, batches, args.compare_clip, args.steps, device))
        res["peak_memory_mib"] = peak_memory_mib(device)
        if args.profile:
            res["profile"] = _profile(trainer, batches, args.profile, device)
        return res


def _profile(trainer, batches, path: str, device: str, steps: int = 3) -> dict:
    """Where a step's time goes: torch.profiler over `steps` steps. The operator table (by own device
    time on CUDA, own CPU time otherwise) goes to `path`; the results get the wall time per step,
    the device's busy time per step (wall minus busy is launch overhead and host work) and the top
    operators. A profiler that cannot start is reported, not fatal: the timings above stand."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    feed = itertools.cycle(batches)
    trainer.train_step(next(feed))
    try:
        with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
            wall = _timed(lambda: trainer.train_step(next(feed)), steps, device)
        events = prof.key_averages()
        Path(path).write_text(events.table(sort_by=key, row_limit=40))
    except Exception as e:  # noqa: BLE001 - e.g. no CUPTI on the machine
        return {"error": f"{type(e).__name__}: {e}"}
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:12]
    return {"steps": steps, "wall_ms_per_step": wall * 1e3,
            "busy_ms_per_step": sum(getattr(e, key) for e in events) / steps / 1e3,
            "ops_per_step": sum(e.count for e in events) / steps,
            "top": [{"op": e.key, "ms_per_step": getattr(e, key) / steps / 1e3, "calls_per_step": e.count / steps}
                    for e in top]}


def per_position(batch: dict, max_chars: int) -> dict:
    """The same batch without the distinct-token fast path: every position of both directions gets
    its own char-CNN pass at the full width, as older ELMo code does it."""
    idx = np.concatenate([batch["fwd_index"].ravel(), batch["bwd_index"].ravel()])
    chars = np.full((len(idx), max_chars), PAD_CHAR, dtype=batch["chars"].dtype)
    chars[:, : batch["chars"].shape[1]] = batch["chars"][idx]
    n = batch["fwd_index"].size
    return {**batch, "token_ids": batch["token_ids"][idx], "chars": chars,
            "fwd_index": np.arange(n).reshape(batch["fwd_index"].shape),
            "bwd_index": n + np.arange(n).reshape(batch["bwd_index"].shape)}


def _step_times(trainer, next_batch, steps: int, device: str) -> tuple[float, float, list]:
    """Seconds per step with the data pipeline and with pre-built batches, each the best of two
    alternating rounds: whichever is timed first right after warm-up otherwise reads slower."""
    with_data, model_only = [], []
    for _ in range(2):
        with_data.append(_timed(lambda: trainer.train_step(next_batch()), steps, device))
        batches = [next_batch() for _ in range(steps)]
        feed = iter(batches)
        model_only.append(_timed(lambda feed=feed: trainer.train_step(next(feed)), steps, device))
    return min(with_data), min(model_only), batches


def _clip_costs(trainer, batches, clip: float, steps: int, device: str) -> dict:
    """ms/step of the same weights unclipped (nn.LSTM), clipped with the fused cell and clipped with
    the step-by-step reference: three rounds each, alternating, the best of each kept."""
    from elmo_dist.model.lstm import ProjectedLstm

    cells = [m for m in trainer.model.modules() if isinstance(m, ProjectedLstm)]
    fused_forward = ProjectedLstm.forward
    variants = {"unclipped": (None, fused_forward), "clipped": (clip, fused_forward),
                "clipped_reference": (clip, ProjectedLstm.reference_forward)}
    times: dict = {name: [] for name in variants}
    feed = itertools.cycle(batches)
    for _ in range(3):
        for name, (value, forward) in variants.items():
            for m in cells:
                m.cell_clip = m.proj_clip = value
                m.forward = forward.__get__(m)
            trainer.train_step(next(feed))  # one untimed step after each switch
            times[name].append(_timed(lambda: trainer.train_step(next(feed)), steps, device))
    for m in cells:
        m.cell_clip = m.proj_clip = None
        del m.forward
    ms = {name: min(t) * 1e3 for name, t in times.items()}
    return {"clip": clip, "unclipped_ms_per_step": ms["unclipped"], "clipped_ms_per_step": ms["clipped"],
            "clipped_reference_ms_per_step": ms["clipped_reference"],
            "clip_cost": ms["clipped"] / ms["unclipped"],
            "clip_reference_cost": ms["clipped_reference"] / ms["unclipped"]}


def _naive(trainer, batches, args, device, to_device) -> dict:
    cfg = trainer.cfg
    torch.manual_seed(0)
    model = NaiveBiLM(cfg.model, len(trainer.corpus.vocab)).to(device).train()
    from elmo_dist.train.optim import build_optimizer

    opt = build_optimizer(cfg.optim, model.parameters())
    denom = 2 * args.batch_size * args.unroll
    state = [None]
    feed = itertools.cycle(batches)

    def step():
        b = to_device(next(feed), device)
        state[0] = naive_step(model, opt, b, state[0], denom, cfg.optim.grad_clip)

    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if args.precision == "bf16" else None
    with autocast or _null():
        _timed(step, args.warmup, device)
        naive = _timed(step, args.steps, device)
    positions = args.batch_size * args.unroll
    return {"naive_ms_per_step": naive * 1e3, "naive_tokens_per_s": positions / naive,
            "naive_flops_per_token": flops_per_token(cfg.model, len(trainer.corpus.vocab), 2.0,
                                                     cfg.model.max_chars_per_token)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> dict:
    args = parse_args(argv)
    res = measure(args)
    device = res["device"]
    cuda = device.startswith("cuda")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision] if cuda else None
    gemm = None if args.peak_tflops else gemm_gflops(device, n=8192 if cuda else 1024, dtype=dtype,
                                                      seconds=args.gemm_seconds)
    spec, _ = gpu_peak_tflops(args.precision) if cuda else (None, None)
    peak_gflops = args.peak_tflops * 1e3 if args.peak_tflops else gemm
    achieved = res["tokens_per_s"] * res["flops_per_token"] / 1e9
    res.update(machine=machine(), gemm_gflops=gemm, peak_gflops=peak_gflops, achieved_gflops=achieved,
               mfu=achieved / peak_gflops if peak_gflops else None,
               spec_peak_gflops=spec * 1e3 if spec else None, mfu_vs_spec=achieved / (spec * 1e3) if spec else None)
    rows = [("flavour / device / precision", f"{args.flavour} / {device} / {args.precision}"
                                             + (" / no dedup" if args.no_dedup else "")),
            ("batch (rows x steps)", f"{args.batch_size} x {args.unroll}"),
            ("tokens/s (model only)", f"{res['tokens_per_s']:,.0f}"),
            ("tokens/s (with data pipeline)", f"{res['tokens_per_s_with_data']:,.0f}"),
            ("ms/step", f"{res['ms_per_step']:.1f} ({res['ms_per_step_with_data']:.1f} with data)"),
            ("data pipeline alone", f"{res['data_ms_per_batch']:.1f} ms/batch "
                                    f"({args.batch_size * args.unroll / res['data_ms_per_batch'] * 1e3:,.0f}"
                                    " tokens/s)"),
            ("peak memory", f"{res['peak_memory_mib']:,.0f} MiB"),
            ("FLOPs per token (analytic, train)", f"{res['flops_per_token'] / 1e6:,.1f} M"),
            ("achieved", f"{achieved:,.1f} GFLOP/s"),
            ("measured GEMM rate", f"{gemm:,.1f} GFLOP/s" if gemm else "-"),
            ("MFU", f"{res['mfu']:.1%} of {peak_gflops:,.0f} GFLOP/s" if res["mfu"] else "-")]
    if res["mfu_vs_spec"]:
        rows.append(("MFU against the data sheet",
                     f"{res['mfu_vs_spec']:.1%} of {res['spec_peak_gflops']:,.0f} GFLOP/s"))
    if "profile" in res:
        prof = res["profile"]
        rows.append(("profile", prof.get("error") or f"busy {prof['busy_ms_per_step']:.1f} of "
                                                     f"{prof['wall_ms_per_step']:.1f} ms/step, "
                                                     f"{prof['ops_per_step']:,.0f} ops/step"))
    if args.compare_naive:
        res["speedup_vs_naive"] = res["naive_ms_per_step"] / res["ms_per_step"]
        rows += [("naive baseline tokens/s", f"{res['naive_tokens_per_s']:,.0f}"),
                 ("speed-up over naive", f"{res['speedup_vs_naive']:.2f}x")]
    if args.compare_clip:
        rows += [("unclipped / clipped ms/step",
                  f"{res['unclipped_ms_per_step']:,.1f} / {res['clipped_ms_per_step']:,.1f} ({res['clip_cost']:.2f}x)"),
                 ("clipped, step-by-step reference", f"{res['clipped_reference_ms_per_step']:,.1f} ms/step "
                                                     f"({res['clip_reference_cost']:.2f}x)")]
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun (bench_dist) rank 0 reports
        emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
