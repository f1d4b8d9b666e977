"""The command line of `elmo-dist prepare` and `elmo-dist submit prepare` (its options, its report),
apart from cli.py, which adds these to its parser and dispatches to them.

    elmo-dist prepare 'crawl/*.jsonl.zst' --text-field text --out data/crawl [--workers N]
    elmo-dist submit prepare 'crawl/*.jsonl.zst' --out /shared/crawl --wait [--slurm.key=value ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build the vocabulary, token shards and held-out split from text",
                       description="Stream corpora (text with one sentence or document per line, JSONL or Parquet "
                                   "with one document per record; .gz and .zst welcome; globs too) into a "
                                   "vocabulary, memory-mappable token-id shards, a held-out split and a manifest.")
    prepare_arguments(p)


def prepare_arguments(p) -> None:
    """The options of `prepare`, which `submit prepare` takes too."""
    p.add_argument("inputs", nargs="+", help="text (.txt, any name), .jsonl/.ndjson or .parquet files, or globs "
                                             "(quote globs)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--text-field", default="text",
                   help="JSONL and Parquet: the field holding a record's text, dotted for a nested one "
                        "(default text)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that read and write in parallel (default 0: the cores this process may use); "
                        "the output is the same for every number")
    p.add_argument("--tokenizer", choices=["whitespace", "moses"], default="whitespace",
                   help="whitespace: text is already tokenized (1B Word style); "
                        "moses: raw text, sacremoses' Moses tokenizer")
    p.add_argument("--lowercase", action="store_true", help="lowercase before tokenizing")
    p.add_argument("--min-count", type=int, default=1, help="keep words seen at least this often (default 1)")
    p.add_argument("--max-size", type=int, default=0, help="cap the vocabulary, specials included (0 = no cap)")
    p.add_argument("--heldout-fraction", type=float, default=0.01, help="fraction of lines held out (default 0.01)")
    p.add_argument("--heldout", nargs="+", default=[], metavar="FILE",
                   help="held-out text files; replaces --heldout-fraction")
    p.add_argument("--shard-tokens", type=int, default=10_000_000, help="tokens per shard (default 10M)")
    p.add_argument("--max-types", type=int, default=20_000_000,
                   help="distinct words kept while counting; past it the rarest are pruned (bounded memory)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out line selection")


def add_submit_prepare(kinds) -> None:
    """`submit prepare`, a kind of `elmo-dist submit`."""
    k = kinds.add_parser("prepare", help="prepare as Slurm jobs: count and encode arrays over the input files",
                         description="`elmo-dist prepare` as four stages of Slurm jobs (count array, merge, encode "
                                     "array, finalize) writing the same output; --out must be on a shared file system.")
    prepare_arguments(k)
    k.add_argument("--parts", type=int, default=0, help="tasks of the count and encode arrays (default 0: one per "
                                                        "input file, at most 1000); --workers is per task")
    k.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a key of the slurm config section (--slurm.partition=cpu is the same)")
    k.add_argument("--wait", action="store_true", help="wait for the last job and print the summary")


def prepare_options(args):
    """PrepareOptions from the parsed arguments (of `prepare` or `submit prepare`)."""
    from elmo_dist.data.prepare import PrepareOptions

    return PrepareOptions(inputs=args.inputs, out=args.out, tokenizer=args.tokenizer, lowercase=args.lowercase,
                          min_count=args.min_count, max_size=args.max_size, heldout_fraction=args.heldout_fraction,
                          heldout_files=args.heldout, shard_tokens=args.shard_tokens, max_types=args.max_types,
                          seed=args.seed, text_field=args.text_field, workers=args.workers)


def cmd_prepare(args) -> int:
    from elmo_dist import commands

    report_prepared(commands.prepare(prepare_options(args)), args.out)
    return 0


def report_prepared(m: dict, out: str) -> None:
    """Print what prepare did and write OUT/summary.json."""
    tr, ho = m["splits"]["train"], m["splits"]["heldout"]
    records = f" of {m['records']:,} records" if m.get("records") else ""
    print(f"prepared {m['lines']:,} lines{records} -> {tr['words']:,} train / {ho['words']:,} held-out words, "
          f"vocab {m['vocab_size']:,}, OOV rate {tr['oov_words'] / max(tr['words'], 1):.2%}")
    bad = f"{m['bad_records_skipped']:,} bad records and " if m.get("bad_records_skipped") else ""
    print(f"skipped {bad}{m['empty_lines_skipped']:,} empty lines and {m['long_lines_skipped']:,} lines over 1 MiB; "
          f"{m['lines_with_bad_utf8']:,} lines had bad UTF-8 (replaced); "
          f"{m['train_tokens_over_48_bytes']:,} training tokens truncated to 48 bytes for char ids")
    print(f"throughput: {m['tokens_per_s']:,.0f} tokens/s ({m['seconds']:.1f} s) -> {out}")
    for warning in m["warnings"]:  # not fatal: the output is complete, and the manifest keeps them
        print(f"elmo-dist: warning: {warning}", file=sys.stderr)
    summary = {"tokens": tr["words"] + ho["words"], "tokens_per_s": m["tokens_per_s"], "seconds": m["seconds"],
               "vocab_size": m["vocab_size"], "out": out}
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))


def cmd_submit_prepare(args) -> int:
    from elmo_dist.launch import submit_prepare

    jobs = submit_prepare.submit_prepare(prepare_options(args), args.slurm, args.parts)
    for line in submit_prepare.describe(jobs, args.out):
        print(line)
    if args.wait:
        report_prepared(submit_prepare.wait(jobs), args.out)
    return 0
