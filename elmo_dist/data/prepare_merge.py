"""The middle stage of `prepare`: held-out lines, counts, vocabulary and shard plan from every
task's segments, taken in task order.

    merge(work, pool)   # -> OUT/.prepare-work/merge.json, vocab.txt, and per segment .table/.oov

1. The line counts of the tasks give each segment its first line number in the corpus, and so
   its held-out lines (`heldout_mask`, a hash of that number). Each segment is then split (in the
   pool): its ids rewritten in place as [training part | held-out part], and its training words
   counted (`NAME.counts`).
2. In segment order: the counts are added to one word list (pruned to --max-types // 2 when it
   passes --max-types, which bounds memory; counts are then inexact, as the manifest says), and
   the line lengths of each split go to its `ShardPlan`.
3. The vocabulary comes from the counts; each segment gets a table from its word ids to
   vocabulary ids (`NAME.table`, -1 - k for its k-th word outside the vocabulary, spelled on line
   k + 1 of `NAME.oov`), which is all the shard writers (prepare_encode) need.

Every step is a function of the segments in order, so the result is the same whatever ran the
tasks: one process, `--workers N`, or a Slurm array.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from itertools import repeat
from pathlib import Path

import numpy as np

from elmo_dist.data.prepare_count import result_path
from elmo_dist.data.prepare_work import (
    SPLITS,
    WORK,
    Pool,
    PrepareOptions,
    Work,
    load_work,
    save_json,
    scratch_vocab,
)
from elmo_dist.data.reader import MAX_LINE_BYTES, Stats
from elmo_dist.data.shards import ShardPlan, WordIds
from elmo_dist.data.vocab import SPECIALS, Vocabulary
from elmo_dist.errors import DataError
from elmo_dist.files import need_space


def heldout_mask(first_line: int, n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of lines first_line+1 .. first_line+n (counted over non-empty lines) are held out:
    a fixed multiplicative hash of the line number, so the split is deterministic, stateless and
    well spread. uint64 products wrap, which keeps the low 32 bits that the hash uses exact."""
    nos = np.arange(first_line + 1, first_line + n + 1, dtype=np.uint64)
    hashed = (nos * np.uint64(2654435761) + np.uint64((seed * 40503) & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    return hashed < fraction * 4294967296.0


def _line_mask(seg: dict, n: int, opts: PrepareOptions, sample: bool) -> np.ndarray:
    """Held out (True) or not, for each of a segment's `n` lines."""
    if seg["heldout_file"]:
        return np.ones(n, dtype=bool)
    if sample:
        return heldout_mask(seg["first_line"], n, opts.heldout_fraction, opts.seed)
    return np.zeros(n, dtype=bool)


def _segments(work: Work) -> tuple[list[dict], dict[str, Stats]]:
    """Every segment in order, with its first line number among the training lines; and the
    readers' counts per split."""
    segs, read, line = [], {s: Stats() for s in SPLITS}, 0
    for i, task in enumerate(work.tasks):
        path = result_path(work.dir, i)
        if not path.is_file():
            raise DataError(f"{path}: missing: counting task {i} ({task['path']}) did not finish")
        res = json.loads(path.read_text())
        read["heldout" if task["heldout"] else "train"].add(Stats(**res["stats"]))
        for seg in res["segments"]:
            segs.append({**seg, "heldout_file": task["heldout"], "first_line": line})
            line += 0 if task["heldout"] else seg["lines"]
    return segs, read


def split_segment(out: str | Path, seg: dict, sample: bool) -> dict:
    """Rewrite a segment's ids as [training | held out] (in place, so no more disk) and count its
    training words; the size of each part."""
    work = load_work(out)
    d, opts = work.dir, work.opts()
    lens = np.fromfile(d / f"{seg['name']}.lens", dtype=np.int32)
    held = np.repeat(_line_mask(seg, len(lens), opts, sample), lens)
    ids = np.fromfile(d / f"{seg['name']}.ids", dtype=np.int32)
    train, heldout = ids[~held], ids[held]
    if not seg["heldout_file"]:
        np.bincount(train, minlength=seg["words"]).astype(np.int64).tofile(d / f"{seg['name']}.counts")
    with open(d / f"{seg['name']}.ids", "r+b") as f:
        train.tofile(f)
        heldout.tofile(f)
    os.replace(d / f"{seg['name']}.ids", d / f"{seg['name']}.sids")  # split: never split twice
    return {"train": len(train), "heldout": len(heldout)}


def _count_and_plan(work: Work, segs: list[dict], sample: bool) -> tuple[WordIds, dict, dict, int]:
    """The training counts of every word (pruned past --max-types), the shard plan and the
    sentence and word totals of each split, and how many words pruning dropped."""
    opts = work.opts()
    counts, pruned = WordIds(), 0
    plans = {s: ShardPlan(opts.shard_tokens) for s in SPLITS}
    totals = {s: Stats() for s in SPLITS}
    for seg in segs:
        lens = np.fromfile(work.dir / f"{seg['name']}.lens", dtype=np.int32)
        held = _line_mask(seg, len(lens), opts, sample)
        for split, mask in (("train", ~held), ("heldout", held)):
            kept = lens[mask]
            kept = kept[kept > 0]
            plans[split].add_lengths(kept)
            totals[split].sentences += len(kept)
            totals[split].tokens += int(kept.sum(dtype=np.int64)) - 2 * len(kept)
        if seg["train"]:
            seg_counts = np.fromfile(work.dir / f"{seg['name']}.counts", dtype=np.int64)
            seen = np.flatnonzero(seg_counts)
            words = (work.dir / f"{seg['name']}.words").read_text(encoding="utf-8").split("\n")
            counts.add_counts([words[i] for i in seen.tolist()], seg_counts[seen])
            if len(counts.words) > opts.max_types:
                counts, dropped = counts.pruned(opts.max_types // 2)
                pruned += dropped
    return counts, plans, totals, pruned


def merge(work: Work, pool: Pool) -> dict:
    """Steps 1-3 of the module's docstring; returns what merge.json holds."""
    opts = work.opts()
    segs, read = _segments(work)
    sample = not work.heldout_files and opts.heldout_fraction > 0
    for seg, sizes in zip(segs, pool.map(split_segment, [(str(work.out), seg, sample) for seg in segs])):
        seg.update(sizes)
    counts, plans, totals, pruned = _count_and_plan(work, segs, sample)
    files = [Path(p) for p in work.files]
    if not totals["train"].tokens:
        raise no_tokens(opts, files, read["train"])
    train_counts = counts.train_counts()
    vocab = Vocabulary.from_counts(train_counts, opts.min_count, opts.max_size)
    if len(vocab) == len(SPECIALS):  # trained on, it "learns" to predict <UNK> (see OOV_WARN_RATE)
        raise no_words(opts, files, train_counts)
    # int32 shards of both streams (tokens and sentence markers)
    need_space(work.out, 4 * sum(st.tokens + 2 * st.sentences for st in totals.values()), "the token shards")
    vocab.counts[0] = vocab.counts[1] = totals["train"].sentences  # <S> and </S>: once a sentence
    vocab.save(work.dir / "vocab.txt")
    pool.map(table_segment, [(str(work.out), seg["name"]) for seg in segs])
    # a word of 12 characters or fewer is at most 48 bytes in UTF-8, so most words skip the encode
    truncated = sum(c for w, c in train_counts.items() if len(w) > 12 and len(w.encode("utf-8")) > 48)
    merged = {"vocab_size": len(vocab), "pruned_types": pruned, "train_tokens_over_48_bytes": truncated,
              "read": {s: asdict(st) for s, st in read.items()},
              "splits": {s: {"sentences": st.sentences, "words": st.tokens} for s, st in totals.items()},
              "shards": {s: p.bounds() for s, p in plans.items()},
              "segments": [{"name": seg["name"], "train": seg["train"], "heldout": seg["heldout"]} for seg in segs]}
    save_json(work.dir / "merge.json", merged)
    return merged


_VOCAB: dict = {}  # per process: the vocabulary index, loaded once for all the segments it maps


def table_segment(out: str | Path, name: str) -> None:
    """NAME.table: each word id of the segment -> its vocabulary id, or -1 - k for its k-th word
    outside the vocabulary, whose spelling is line k + 1 of NAME.oov."""
    d = Path(out) / WORK
    key = (str(d), os.stat(d / "vocab.txt").st_mtime_ns)
    if key not in _VOCAB:
        _VOCAB.clear()
        _VOCAB[key] = scratch_vocab(d).index
    words = (d / f"{name}.words").read_text(encoding="utf-8").split("\n")
    table = np.fromiter(map(_VOCAB[key].get, words, repeat(-1)), dtype=np.int32, count=len(words))
    outside = np.flatnonzero(table < 0)
    table[outside] = -1 - np.arange(len(outside), dtype=np.int32)
    table.tofile(d / f"{name}.table")
    (d / f"{name}.oov").write_text("\n".join(words[i] for i in outside.tolist()), encoding="utf-8")


def _where(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0]} and {len(files) - 1} more inputs"


def no_tokens(opts: PrepareOptions, files: list[Path], read: Stats) -> DataError:
    """The error for a training part without tokens, saying what became of the lines."""
    n, long, empty = read.lines, read.long_lines, read.empty_lines
    limit = f"{MAX_LINE_BYTES >> 20} MiB"
    if read.records and read.bad_records == read.records:
        why = (f"all {read.records:,} records were skipped as bad (the first: {read.first_bad}); "
               f"is --text-field {opts.text_field!r} the field of the text?")
    elif n == 0:
        why = "there are no lines at all"
    elif long == n:
        why = f"all {n:,} lines were longer than {limit} and were skipped"
    elif empty == n:
        why = f"all {n:,} lines were empty"
    elif long + empty == n:
        why = f"of its {n:,} lines, {long:,} were longer than {limit} (skipped) and {empty:,} empty"
    else:
        why = (f"none of its {n - long - empty:,} non-empty lines gave a training token (held out by "
               f"--heldout-fraction {opts.heldout_fraction}, or nothing left after tokenizing)")
    return DataError(f"{_where(files)}: the corpus has no tokens in its training part: {why}")


def no_words(opts: PrepareOptions, files: list[Path], train_counts: dict[str, int]) -> DataError:
    """The error for a vocabulary of the specials alone, naming the count that would keep a word."""
    words = {w: c for w, c in train_counts.items() if w not in SPECIALS}
    if not words:
        return DataError(f"{_where(files)}: the training text has no words besides <S>, </S>, <UNK>")
    top = max(words, key=words.__getitem__)
    return DataError(f"{_where(files)}: --min-count {opts.min_count} leaves no words in the vocabulary (only "
                     f"<S>, </S>, <UNK>): the most frequent training word, {top!r}, occurs {words[top]:,} times; "
                     f"use --min-count {words[top]} or less")
