"""The figures of one `make demo` run, as benchmark JSON that the docs quote (with its date).

    /usr/bin/time -f %e make demo 2> time.txt
    python -m benchmarks.demo_results runs/demo --seconds "$(tail -1 time.txt)" --out benchmarks/results/demo.json

Reads the run's own summaries: the biLM's held-out perplexity (runs/demo/pretrain/summary.json) and
the fine-tuning comparison table (runs/demo/finetune/summary.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import emit, machine
from benchmarks.finetune_results import score


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_dir", help="the demo's directory (runs/demo)")
    p.add_argument("--seconds", type=float, help="the wall time of the whole `make demo`, if measured")
    p.add_argument("--note", help="how the figures were measured, if not by one plain `make demo`")
    p.add_argument("--out", help="JSON output")
    args = p.parse_args(argv)
    d = Path(args.demo_dir)
    pre = json.loads((d / "pretrain" / "summary.json").read_text())
    ft = json.loads((d / "finetune" / "summary.json").read_text())
    keys = ("val_ppl_fwd", "val_ppl_bwd", "val_ppl", "unigram_ppl", "steps", "tokens_per_s")
    res = {"pretrain": {k: pre.get(k) for k in keys}, "finetune": {"table": ft["table"], "seeds": ft["seeds"],
           "n_train": ft["n_train"], "n_test": ft["n_test"]}, "seconds": args.seconds, "note": args.note,
           "machine": machine()}
    rows = [("held-out perplexity", f"{pre['val_ppl']:.2f} (unigram {pre['unigram_ppl']:.2f})")]
    rows.extend((row["variant"], score(row, "accuracy")) for row in ft["table"])
    if args.seconds:
        rows.append(("make demo", f"{args.seconds / 60:.1f} min"))
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
