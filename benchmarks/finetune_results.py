"""The comparison table of one `elmo-dist finetune` run, as benchmark JSON that the docs quote (with
its date and machine), for runs outside `make demo` such as the tagging example.

    /usr/bin/time -f %e elmo-dist finetune configs/tagging.yaml bilm.path=runs/demo/pretrain 2> time.txt
    python -m benchmarks.finetune_results runs/tagging --seconds "$(tail -1 time.txt)" \
        --out benchmarks/results/tagging.json

Reads RUN_DIR/summary.json and RUN_DIR/config.yaml (the resolved config, kept with the figures).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import emit, machine


def score(row: dict, key: str) -> str:
    """A comparison-table row's figure `key` as the docs quote it: '0.9409 ± 0.0024', or '-' if missing."""
    if row.get(key) is None:
        return "-"
    return f"{row[key]:.4f}" + (f" ± {row[key + '_std']:.4f}" if f"{key}_std" in row else "")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the fine-tuning run directory")
    p.add_argument("--seconds", type=float, help="the wall time of the whole command, if measured")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS it ran with, if set")
    p.add_argument("--out", help="JSON output")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    summary = json.loads((run / "summary.json").read_text())
    keys = ("task", "seeds", "early_stopping", "n_train", "n_valid", "n_test", "processes", "table")
    res = {**{k: summary.get(k) for k in keys}, "config": (run / "config.yaml").read_text(),
           "seconds": args.seconds, "omp_num_threads": args.threads, "machine": machine()}
    rows = []
    for row in summary["table"]:  # entity F1 where the tags name entities, else (token) accuracy
        key = "f1" if row.get("f1") is not None else "accuracy"
        rows.append((row["variant"], f"{key} {score(row, key)}"))
    if args.seconds:
        rows.append(("wall time", f"{args.seconds / 60:.1f} min"))
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
