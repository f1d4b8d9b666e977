"""Data-parallel overhead on the CPU: the step time of 1 vs 2 gloo processes, same per-rank batch.

    python -m benchmarks.bench_dist --flavour debug --batch-size 32

Both runs use one thread per process (as torchrun sets), so the extra time of the 2-process step is
the gradient all-reduce and the rest of the synchronisation, not thread contention.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import emit, machine


def run(nproc: int, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(args.port), "-m", "benchmarks.bench_pretrain", "--flavour", args.flavour,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--corpus-tokens", str(args.corpus_tokens), "--vocab", str(args.vocab), "--device", "cpu", "--out", str(out)]
    subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_dist", description=__doc__.split("\n\n")[0])
    p.add_argument("--flavour", default="debug")
    p.add_argument("--batch-size", type=int, default=32, help="rows per process")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--corpus-tokens", type=int, default=300_000)
    p.add_argument("--vocab", type=int, default=20_000)
    p.add_argument("--port", type=int, default=29561)
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        one, two = run(1, args, Path(tmp) / "1.json"), run(2, args, Path(tmp) / "2.json")
    overhead = two["ms_per_step"] / one["ms_per_step"] - 1
    res = {"flavour": args.flavour, "rows_per_process": args.batch_size, "one_process": one, "two_processes": two,
           "overhead": overhead, "machine": machine()}
    rows = [("1 process", f"{one['ms_per_step']:.1f} ms/step, {one['tokens_per_s']:,.0f} tokens/s"),
            ("2 processes (gloo)", f"{two['ms_per_step']:.1f} ms/step, {2 * two['tokens_per_s']:,.0f} tokens/s in all"),
            ("communication overhead", f"{overhead:+.1%} per step")]
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
