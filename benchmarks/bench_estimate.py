"""How close `elmo-dist pretrain --estimate` comes to the real time: the demo's estimate, then the
demo's real pretraining (a fresh process, timed from its start to its exit), on the same machine.

    python -m benchmarks.bench_estimate --out benchmarks/results/estimate.json
    python -m benchmarks.bench_estimate --data runs/demo/prepared --out benchmarks/results/estimate.json

Without --data it prepares the demo corpus as `make demo` does (BBC News training articles, Moses
tokenizer, --min-count 2) in a temporary directory. Run it on a quiet machine: the two runs are
minutes apart, and another job's load in either one moves the ratio. The load average before,
between and after is recorded beside the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, machine

REPO = Path(__file__).resolve().parent.parent


def elmo_dist(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m elmo_dist ARGS` as a fresh process: (the process, its wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "elmo_dist", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"elmo-dist {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc, seconds


def prepare_demo(tmp: Path) -> Path:
    """The demo corpus, prepared as the Makefile's `demo` target does."""
    subprocess.run([sys.executable, "-m", "elmo_dist.data.bbc", str(tmp / "text")], check=True, capture_output=True)
    elmo_dist("prepare", str(tmp / "text/train.txt"), "--heldout", str(tmp / "text/heldout.txt"),
              "--tokenizer", "moses", "--min-count", "2", "--out", str(tmp / "prepared"), cwd=tmp)
    return tmp / "prepared"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_estimate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/demo.yaml"))
    p.add_argument("--data", help="the prepared demo corpus (default: prepare it, as `make demo` does)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for both runs, e.g. train.max_steps=100")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        tmp = Path(tmp)
        data = Path(args.data).resolve() if args.data else prepare_demo(tmp)
        config = str(Path(args.config).resolve())
        run = [config, f"data.dir={data}", f"train.run_dir={tmp / 'pretrain'}", *args.overrides]
        load = {"before": os.getloadavg()[0]}
        est_proc, est_seconds = elmo_dist("pretrain", *run, "--estimate", "--json", cwd=tmp)
        est = json.loads(est_proc.stdout)
        load["between"] = os.getloadavg()[0]
        _, real_seconds = elmo_dist("pretrain", *run, cwd=tmp)
        load["after"] = os.getloadavg()[0]
        summary = json.loads((tmp / "pretrain" / "summary.json").read_text())
    ratio = est["total_s"] / real_seconds
    res = {"config": Path(args.config).name, "overrides": args.overrides, "estimate_s": est["total_s"],
           "real_s": real_seconds, "ratio": ratio, "within_30_percent": abs(ratio - 1) <= 0.3,
           "estimate_took_s": est_seconds, "estimate": est,
           "real": {"tokens_per_s": summary["tokens_per_s"], "steps": summary["steps"]},
           "load_average_1min": load, "threads": os.environ.get("OMP_NUM_THREADS", "torch's default"),
           "machine": machine()}
    rows = [("estimate", f"{est['total_s']:.1f} s (the estimate itself took {est_seconds:.1f} s)"),
            ("real", f"{real_seconds:.1f} s, process start to exit"),
            ("estimate / real", f"{ratio:.3f}"),
            ("step", f"estimated {est['tokens_per_s']:,.0f} tokens/s; the run's own figure "
                     f"{summary['tokens_per_s']:,.0f} (its loop, periodic evaluations and checkpoints included)"),
            ("load average", ", ".join(f"{k} {v:.2f}" for k, v in load.items()))]
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
