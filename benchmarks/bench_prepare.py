"""`elmo-dist prepare` throughput and peak memory on generated Zipf corpora of two sizes.

    python -m benchmarks.bench_prepare --tokens 10000000 20000000

Each size runs in a fresh process, so its peak RSS is its own; memory that stays flat while the
corpus doubles is the point (prepare streams the text twice and keeps only bounded counts).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import emit, machine, peak_memory_mib, write_zipf_corpus


def child(text: str, out: str, tokenizer: str) -> None:
    from elmo_dist.data.prepare import PrepareOptions, prepare

    m = prepare(PrepareOptions(inputs=[text], out=out, tokenizer=tokenizer, heldout_fraction=0.01))
    print(json.dumps({"tokens": m["splits"]["train"]["words"] + m["splits"]["heldout"]["words"],
                      "seconds": m["seconds"], "tokens_per_s": m["tokens_per_s"], "vocab": m["vocab_size"],
                      "peak_rss_mib": peak_memory_mib("cpu")}))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[10_000_000, 20_000_000])
    p.add_argument("--vocab", type=int, default=200_000)
    p.add_argument("--tokenizer", default="whitespace", choices=["whitespace", "moses"])
    p.add_argument("--out", help="JSON file for the results")
    p.add_argument("--child", nargs=2, metavar=("TEXT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child, args.tokenizer)
        return {}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tokens:
            text = write_zipf_corpus(Path(tmp) / f"c{n}.txt", n, args.vocab)
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_prepare", "--tokenizer", args.tokenizer,
                                   "--child", str(text), str(Path(tmp) / f"p{n}")], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
            runs.append({"corpus_mib": text.stat().st_size / 2**20, **json.loads(proc.stdout.strip().splitlines()[-1])})
            text.unlink()
    res = {"runs": runs, "tokenizer": args.tokenizer, "processes": 1, "machine": machine()}
    rows = [(f"{r['tokens']:,} tokens ({r['corpus_mib']:.0f} MiB)",
             f"{r['tokens_per_s']:,.0f} tokens/s on 1 core, {r['seconds']:.1f} s, "
             f"peak RSS {r['peak_rss_mib']:,.0f} MiB, vocab {r['vocab']:,}") for r in runs]
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
