"""`elmo-dist prepare` throughput and peak memory: two corpus sizes on one worker, then 1, 2 and all
workers on plain text, JSONL and Parquet holding the same documents.

    python -m benchmarks.bench_prepare --tokens 10000000 20000000 --workers 1 2 0 --formats text jsonl parquet

Each run is a fresh process. Its peak memory is sampled over the whole process tree (the main
process, the forkserver and the workers, every 0.1 s from /proc), so that the figure for N workers
is what the machine gives up; memory that stays flat while the corpus doubles is the point
(prepare holds bounded segments, word lists and shards). The matrix of workers x formats runs on
the largest size. `--workers 0` means the cores this process may use. Speed-ups need cores to
spare: run it on an otherwise idle machine (the JSON records the load average before each run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, machine, write_zipf_corpus

DOC_LINES = 8  # a JSONL record or Parquet row holds this many lines of the text corpus


def _tree_rss_bytes(root: int) -> int:
    """The summed RSS of `root` and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(d)], rss[int(d)] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += [c for c, p in parents.items() if p == pid]
    return total


def child(inp: str, out: str, tokenizer: str, workers: int, text_field: str) -> None:
    from elmo_dist.data.prepare import PrepareOptions, prepare

    m = prepare(PrepareOptions(inputs=[inp], out=out, tokenizer=tokenizer, heldout_fraction=0.01, workers=workers,
                               text_field=text_field))
    print(json.dumps({"tokens": m["splits"]["train"]["words"] + m["splits"]["heldout"]["words"],
                      "seconds": m["seconds"], "tokens_per_s": m["tokens_per_s"], "vocab": m["vocab_size"]}))


def to_jsonl(text: Path, path: Path) -> Path:
    """The text's lines as JSONL documents of DOC_LINES lines each, streamed."""
    with open(text, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        while lines := [line for _, line in zip(range(DOC_LINES), src)]:
            dst.write(json.dumps({"text": "".join(lines).rstrip("\n")}) + "\n")
    return path


def to_parquet(text: Path, path: Path, rows_per_group: int = 20_000) -> Path:
    """The same documents as a Parquet file (one `text` column), a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string())])
    with open(text, encoding="utf-8") as src, pq.ParquetWriter(path, schema) as writer:
        docs = []
        while lines := [line for _, line in zip(range(DOC_LINES), src)]:
            docs.append("".join(lines).rstrip("\n"))
            if len(docs) == rows_per_group:
                writer.write_table(pa.table({"text": docs}, schema=schema))
                docs = []
        if docs:
            writer.write_table(pa.table({"text": docs}, schema=schema))
    return path


def _run(inp: Path, out: Path, tokenizer: str, workers: int) -> dict:
    """One prepare in a fresh process, its process tree's RSS sampled from here every 0.1 s (here,
    not in the measured process, whose own threads would compete with prepare for the GIL)."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "benchmarks.bench_prepare", "--tokenizer", tokenizer,
           "--child", str(inp), str(out), str(workers)]
    with tempfile.TemporaryFile("w+") as said, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=said, text=True,
                                                                env={**os.environ, "OMP_NUM_THREADS": "1"}) as proc:
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.1)
        stdout = proc.stdout.read()
        said.seek(0)
        if proc.returncode:
            raise SystemExit(f"bench_prepare: the run on {inp.name} with {workers} workers failed:\n{said.read()}")
    shutil.rmtree(out)
    return {"corpus_mib": round(inp.stat().st_size / 2**20, 1), "load_before": round(load, 2),
            **json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mib": round(peak / 2**20, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[10_000_000, 20_000_000])
    p.add_argument("--vocab", type=int, default=200_000)
    p.add_argument("--tokenizer", default="whitespace", choices=["whitespace", "moses"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 0], help="worker counts (0: every core)")
    p.add_argument("--formats", nargs="+", default=["text", "jsonl", "parquet"], choices=["text", "jsonl", "parquet"])
    p.add_argument("--out", help="JSON file for the results")
    p.add_argument("--child", nargs=3, metavar=("INPUT", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.tokenizer, int(args.child[2]), "text")
        return {}
    runs, matrix = [], []
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tokens:
            text = write_zipf_corpus(Path(tmp) / f"c{n}.txt", n, args.vocab)
            runs.append({"workers": 1, **_run(text, Path(tmp) / "p", args.tokenizer, 1)})
            if n != max(args.tokens):
                text.unlink()
        text = Path(tmp) / f"c{max(args.tokens)}.txt"
        inputs = {"text": text}
        if "jsonl" in args.formats:
            inputs["jsonl"] = to_jsonl(text, Path(tmp) / "c.jsonl")
        if "parquet" in args.formats:
            inputs["parquet"] = to_parquet(text, Path(tmp) / "c.parquet")
        for fmt in args.formats:
            for w in args.workers:
                matrix.append({"format": fmt, "workers": w or cores,
                               **_run(inputs[fmt], Path(tmp) / "p", args.tokenizer, w)})
    res = {"runs": runs, "matrix": matrix, "tokenizer": args.tokenizer, "doc_lines": DOC_LINES, "cores": cores,
           "machine": machine()}
    rows = [(f"{r['tokens']:,} tokens ({r['corpus_mib']:.0f} MiB), 1 worker",
             f"{r['tokens_per_s']:,.0f} tokens/s, {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB, "
             f"vocab {r['vocab']:,}") for r in runs]
    rows += [(f"{r['format']}, {r['workers']} worker(s)",
              f"{r['tokens_per_s']:,.0f} tokens/s, {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB "
              f"(load before {r['load_before']})") for r in matrix]
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
