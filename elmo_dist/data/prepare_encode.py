"""The last stages of `prepare`: write the shards from the segments' ids and tables, then the
vocabulary and the manifest.

    encode_shards(out, [("train", 0), ("train", 1)])   # shards, each with a shard-SPLIT-N.json result
    finalize(work)                                      # vocab.txt, vocab.counts.npy, manifest.json

A shard is a range of its split's stream, which may span segments: each segment's part is read
from its split ids (`NAME.sids`, [training | held out]) and mapped through its table. Words
outside the vocabulary get shard-local ids in order of first appearance in the shard, across
segments, by their spelling. Shards are independent of each other, so any process can write any
of them; memory is about 8 bytes a token of one shard.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from elmo_dist.data.prepare_work import (
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    Work,
    clear_scratch,
    load_work,
    save_json,
    scratch_vocab,
)
from elmo_dist.data.reader import Stats
from elmo_dist.data.shards import write_shard, write_synced
from elmo_dist.data.vocab import UNK_ID

# A training OOV rate above this gets a warning. Every OOV token is one <UNK> target to the softmax,
# an easy one to predict, so a vocabulary that leaves much of the text out makes perplexity read
# better than the model is (--min-count 1000000 left only <S>, </S>, <UNK>, and pretraining "reached"
# a held-out perplexity of 1.38). The 1B Word Benchmark's rate is 0.28% (793k words, min count 3);
# 5% leaves room for small vocabularies over noisy web text, and is still far from that collapse.
OOV_WARN_RATE = 0.05

_CACHE: dict = {}  # per process: merge.json, and the tables of the segment read last


def _merged(d: Path) -> dict:
    key = ("merge", str(d), (d / "merge.json").stat().st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = json.loads((d / "merge.json").read_text())
    return _CACHE[key]


def _tables(d: Path, name: str) -> tuple[np.ndarray, list[str]]:
    st = (d / f"{name}.table").stat()
    key = ("table", str(d), name, st.st_ino, st.st_mtime_ns)  # never a table of an earlier prepare
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] == "table"]:
            del _CACHE[old]
        oov = (d / f"{name}.oov").read_text(encoding="utf-8")
        _CACHE[key] = (np.fromfile(d / f"{name}.table", dtype=np.int32), oov.split("\n") if oov else [])
    return _CACHE[key]


def shard_jobs(work: Work) -> list[tuple[str, int]]:
    """Every shard to write, as (split, index), training shards first."""
    merged = _merged(work.dir)
    return [(s, i) for s in SPLITS for i in range(len(merged["shards"][s]))]


def encode_shards(out: str | Path, jobs: list[tuple[str, int]]) -> None:
    """Write the shards `jobs` names, each with its result (shard-SPLIT-N.json in the scratch)."""
    d = load_work(out).dir
    for split, index in jobs:
        encode_shard(d, split, index)


def encode_shard(d: Path, split: str, index: int) -> dict:
    merged = _merged(d)
    a, b = merged["shards"][split][index]
    vocab_size = merged["vocab_size"]
    tokens, spelled = np.empty(b - a, dtype=np.int32), {}  # spelled: OOV word -> its shard-local id
    pos = start = 0  # pos: where this segment's part of the split starts in the split's stream
    for seg in merged["segments"]:
        n = seg[split]
        lo, hi = max(a, pos), min(b, pos + n)
        if lo < hi:
            base = 0 if split == "train" else seg["train"]
            ids = np.fromfile(d / f"{seg['name']}.sids", dtype=np.int32, count=hi - lo, offset=4 * (base + lo - pos))
            table, oov = _tables(d, seg["name"])
            tokens[start:start + hi - lo] = _mapped(ids, table, oov, spelled, vocab_size)
            start += hi - lo
        pos += n
        if pos >= b:
            break
    entry = write_shard(d.parent / split, index, tokens, list(spelled))
    result = {"entry": entry, "oov_tokens": int(np.count_nonzero(tokens >= vocab_size))}
    save_json(d / f"shard-{split}-{index:05d}.json", result)
    return result


def _mapped(ids: np.ndarray, table: np.ndarray, oov: list[str], spelled: dict, vocab_size: int) -> np.ndarray:
    """Vocabulary ids for a segment's part of a shard; words outside the vocabulary numbered
    vocab_size + k in order of first appearance in the shard (`spelled` carries them across parts)."""
    mapped = table[ids]
    at = np.flatnonzero(mapped < 0)
    if len(at):
        codes = -1 - mapped[at]
        uniq, first = np.unique(codes, return_index=True)
        local = np.empty(len(uniq), dtype=np.int32)
        for j in np.argsort(first, kind="stable").tolist():
            local[j] = spelled.setdefault(oov[uniq[j]], vocab_size + len(spelled))
        mapped[at] = local[np.searchsorted(uniq, codes)]
    return mapped


def finalize(work: Work) -> dict:
    """The vocabulary (<UNK>'s count now known), the manifest (written last, atomically), and the
    scratch directory removed; returns the manifest."""
    merged = _merged(work.dir)
    stats = {s: Stats(sentences=v["sentences"], tokens=v["words"]) for s, v in merged["splits"].items()}
    shards = {s: [] for s in SPLITS}
    for s in SPLITS:
        for i in range(len(merged["shards"][s])):
            res = json.loads((work.dir / f"shard-{s}-{i:05d}.json").read_text())
            shards[s].append(res["entry"])
            stats[s].oov_tokens += res["oov_tokens"]
    vocab = scratch_vocab(work.dir)
    vocab.counts[UNK_ID] = stats["train"].oov_tokens  # <UNK> stands for every training token outside it
    vocab.save(work.out / "vocab.txt")
    manifest = _manifest(work, merged, stats, shards, time.time() - work.started)
    tmp = work.out / (MANIFEST + ".tmp")
    write_synced(tmp, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    tmp.replace(work.out / MANIFEST)
    _CACHE.clear()
    clear_scratch(work.out)
    return manifest


def _warnings(opts, train: Stats, read: Stats) -> list[str]:
    out = []
    if read.bad_records:
        out.append(f"{read.bad_records:,} of {read.records:,} records were skipped as bad (the first: "
                   f"{read.first_bad})")
    rate = train.oov_tokens / max(train.tokens, 1)
    if rate <= OOV_WARN_RATE:
        return out
    fixes = [f"lower --min-count (now {opts.min_count})"] if opts.min_count > 1 else []
    fixes += [f"raise --max-size (now {opts.max_size:,})"] if opts.max_size else []
    fix = " or ".join(fixes) or f"raise --max-types (now {opts.max_types:,}), which pruned rare words"
    return out + [f"{rate:.2%} of the training words are outside the vocabulary (more than {OOV_WARN_RATE:.0%}; "
                  f"the 1B Word Benchmark has 0.28%): the softmax sees each as <UNK>, which makes perplexity look "
                  f"better than the model is; {fix}"]


def _manifest(work: Work, merged: dict, stats: dict[str, Stats], shards: dict, seconds: float) -> dict:
    read = Stats()
    for s in SPLITS:
        read.add(Stats(**merged["read"][s]))
    opts = work.opts()
    return {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "options": asdict(opts),
        "sources": work.files,
        "heldout_sources": work.heldout_files,
        "vocab_size": merged["vocab_size"],
        "vocab_counts_exact": merged["pruned_types"] == 0,
        "pruned_types": merged["pruned_types"],
        "lines": read.lines,
        "empty_lines_skipped": read.empty_lines,
        "lines_with_bad_utf8": read.lines_with_bad_utf8,
        "long_lines_skipped": read.long_lines,
        "byte_order_marks_dropped": read.boms,
        "records": read.records,
        "bad_records_skipped": read.bad_records,
        "train_tokens_over_48_bytes": merged["train_tokens_over_48_bytes"],
        "train_oov_rate": round(stats["train"].oov_tokens / max(stats["train"].tokens, 1), 6),
        "warnings": _warnings(opts, stats["train"], read),
        "splits": {s: {"sentences": st.sentences, "words": st.tokens, "oov_words": st.oov_tokens,
                       "stream_tokens": st.tokens + 2 * st.sentences, "shards": shards[s]}
                   for s, st in stats.items()},
        "tasks": len(work.tasks),
        "seconds": round(seconds, 3),
        "tokens_per_s": round((stats["train"].tokens + stats["heldout"].tokens) / max(seconds, 1e-9), 1),
    }
