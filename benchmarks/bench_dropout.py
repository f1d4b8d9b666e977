"""The task model's dropout (elmo_dist.model.task.Dropout) against torch's nn.Dropout, on the CPU,
forward and backward, on one fine-tuning batch of ELMo vectors.

    python -m benchmarks.bench_dropout --out benchmarks/results/dropout.json
    python -m benchmarks.bench_dropout --shape 32 500 128 --threads 1 2

The default shape is a batch of the demo's fine-tuning on whole articles: 32 documents of about
500 tokens, 128-dimensional ELMo vectors. Each figure is the median of `--repeats` timings.
"""
from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import emit, machine


def time_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> dict:
    import torch
    from torch import nn

    from elmo_dist.model.task import Dropout

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_dropout", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs="+", default=[32, 500, 128])
    p.add_argument("--p", type=float, default=0.5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    x = torch.randn(*args.shape, requires_grad=True)
    grad = torch.randn(*args.shape)
    rows, res = [], {"shape": args.shape, "p": args.p, "repeats": args.repeats, "by_threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        figures = {}
        for name, module in (("torch.nn.Dropout", nn.Dropout(args.p)), ("elmo_dist Dropout", Dropout(args.p))):
            fwd = time_ms(lambda m=module: m(x), args.repeats)
            both = time_ms(lambda m=module: m(x).backward(grad), args.repeats)
            figures[name] = {"forward_ms": fwd, "forward_backward_ms": both}
            rows.append((f"{name}, {threads} thread(s)", f"forward {fwd:.2f} ms, forward + backward {both:.2f} ms"))
        res["by_threads"][str(threads)] = figures
    res["machine"] = machine()
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
