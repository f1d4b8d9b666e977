"""`elmo-dist prepare`: stream text files into a vocabulary, token-id shards and a held-out split.

    elmo-dist prepare 'corpus/*.txt.gz' --out data/prepared --min-count 3 --heldout-fraction 0.01

Two streaming passes keep memory flat in the corpus size. The first reads the text, a run of
about 2 MiB of lines at a time: one `str.split` per run, one dict lookup per token giving each
word an id in order of first sight (written to a scratch file beside the output), one
`np.bincount` per run for the counts, and the places where shards will end. The vocabulary comes
from the counts. The second pass is a numpy remap of the scratch ids to vocabulary ids, shard by
shard: no text is read or looked up twice, which is what makes prepare several million tokens per
second on one core (docs/performance.md). If the number of distinct words passes `--max-types`,
the rarest are pruned to bound memory, the scratch ids become void, and the second pass reads the
text again and looks every word up; both second passes write what a word-by-word lookup writes.

Each shard (about `--shard-tokens` tokens, ending on a sentence boundary) is one int32 stream
`<S> w1 .. wn </S> <S> ...`; a word outside the vocabulary gets a shard-local id >= len(vocab),
whose spelling is in the shard's `.oov.txt`, so the char CNN always sees its real characters.
The manifest is written last, atomically: a directory without `manifest.json` is incomplete.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import compress
from pathlib import Path
from typing import Iterator

import numpy as np

from elmo_dist.data.reader import MAX_LINE_BYTES, Stats, expand_inputs, read_line_runs
from elmo_dist.data.shards import (
    LookupShardWriter,
    ShardPlan,
    WordIds,
    run_words,
    vocab_ids,
    write_cached_shards,
    write_synced,
)
from elmo_dist.data.tokenize import build_run_tokenizer
from elmo_dist.data.vocab import BOS_ID, EOS_ID, SPECIALS, UNK_ID, Vocabulary
from elmo_dist.errors import DataError, DiskFull, OutputError, UserError
from elmo_dist.files import free_bytes, human, inside, looks_full, need_space, refuse_overwrite, writable_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
# A training OOV rate above this gets a warning. Every OOV token is one <UNK> target to the softmax,
# an easy one to predict, so a vocabulary that leaves much of the text out makes perplexity read
# better than the model is (--min-count 1000000 left only <S>, </S>, <UNK>, and pretraining "reached"
# a held-out perplexity of 1.38). The 1B Word Benchmark's rate is 0.28% (793k words, min count 3);
# 5% leaves room for small vocabularies over noisy web text, and is still far from that collapse.
OOV_WARN_RATE = 0.05


@dataclass
class PrepareOptions:
    inputs: list = field(default_factory=list)
    out: str = "data/prepared"
    tokenizer: str = "whitespace"
    lowercase: bool = False
    min_count: int = 1
    max_size: int = 0
    heldout_fraction: float = 0.01
    heldout_files: list = field(default_factory=list)
    shard_tokens: int = 10_000_000
    max_types: int = 20_000_000
    seed: int = 0


def heldout_mask(first_line: int, n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of lines first_line+1 .. first_line+n (counted over non-empty lines) are held out:
    a fixed multiplicative hash of the line number, so the split is deterministic, stateless and
    well spread. uint64 products wrap, which keeps the low 32 bits that the hash uses exact."""
    nos = np.arange(first_line + 1, first_line + n + 1, dtype=np.uint64)
    hashed = (nos * np.uint64(2654435761) + np.uint64((seed * 40503) & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    return hashed < fraction * 4294967296.0


def iter_runs(opts: PrepareOptions, files: list[Path], heldout: list[Path],
              stats: dict[str, Stats]) -> Iterator[tuple[str, list[str]]]:
    """(split, lines): the non-empty lines of the train and held-out inputs, tokenized, a run at a
    time; a run left without lines (none held out, or none with a token) is not yielded."""
    tokenize = build_run_tokenizer(opts.tokenizer, opts.lowercase)
    for split, run in _split_runs(opts, files, heldout, stats):
        if lines := tokenize(run):
            yield split, lines


def _split_runs(opts, files, heldout, stats) -> Iterator[tuple[str, list[str]]]:
    """(split, raw lines) per run: the training files' runs split by the held-out hash, then the
    held-out files' runs."""
    sample, line_no = not heldout and opts.heldout_fraction > 0, 0
    for path in files:
        for run in read_line_runs(path, stats["train"]):
            if not sample:
                yield "train", run
                continue
            held = heldout_mask(line_no, len(run), opts.heldout_fraction, opts.seed)
            line_no += len(run)
            yield "train", list(compress(run, (~held).tolist()))
            yield "heldout", list(compress(run, held.tolist()))
    for path in heldout:
        for run in read_line_runs(path, stats["heldout"]):
            yield "heldout", run


@dataclass
class FirstPass:
    """What the counting pass learns: the words and their counts, where the shards end, and the
    sentence and word totals (the second pass adds the OOV counts)."""
    word_ids: WordIds
    plans: dict
    stats: dict
    pruned_types: int = 0

    @property
    def cached(self) -> bool:
        """Every token's first-sight id is in the scratch files: nothing was pruned, so none is void."""
        return self.pruned_types == 0


def _first_pass(opts, files, heldout, read_stats, scratch: dict[str, Path]) -> FirstPass:
    """Count the training words, plan the shards, and keep each token's first-sight id on disk.
    If the number of distinct words passes `max_types`, the rarest are pruned; their ids are then
    void, so the scratch files are dropped and the second pass reads the text again."""
    fp = FirstPass(WordIds(), {s: ShardPlan(opts.shard_tokens) for s in SPLITS}, {s: Stats() for s in SPLITS})
    sinks = {s: open(path, "wb") for s, path in scratch.items()}
    try:
        for split, lines in iter_runs(opts, files, heldout, read_stats):
            words = run_words(lines)
            fp.stats[split].sentences += len(lines)
            fp.stats[split].tokens += len(words) - 2 * len(lines)
            fp.plans[split].add(lines, len(words))
            ids = fp.word_ids.ids(words)
            if split == "train":
                fp.word_ids.count(ids)
            if fp.cached:
                ids.tofile(sinks[split])
            if len(fp.word_ids.words) > opts.max_types:
                fp.word_ids, dropped = fp.word_ids.pruned(opts.max_types // 2)
                fp.pruned_types += dropped
                for f in sinks.values():  # the disk it held is free again at once
                    f.truncate(0)
    finally:
        for f in sinks.values():
            f.close()
    return fp


def _second_pass(opts, files, heldout, vocab, out, fp: FirstPass, scratch) -> dict:
    """Write the shards of both splits and count their OOV tokens into `fp.stats`; returns the
    shards' manifest entries."""
    shards = {}
    if fp.cached:  # a remap of the ids on disk
        table = vocab_ids(fp.word_ids, vocab)
        for s in SPLITS:
            shards[s], fp.stats[s].oov_tokens = write_cached_shards(scratch[s], fp.plans[s], table,
                                                                    fp.word_ids.words, len(vocab), out / s)
        return shards
    writers = {s: LookupShardWriter(out / s, vocab, fp.plans[s]) for s in SPLITS}
    for split, lines in iter_runs(opts, files, heldout, {s: Stats() for s in SPLITS}):
        writers[split].add(run_words(lines))
    for s, w in writers.items():
        w.flush()
        shards[s], fp.stats[s].oov_tokens = w.shards, w.oov_tokens
    return shards


def prepare(opts: PrepareOptions) -> dict:
    """Run both passes and write the manifest; returns the manifest dict."""
    files, heldout = _checked_inputs(opts)
    out = _checked_out(opts, files + heldout)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end, the directory is incomplete
    for old in list(out.glob("train/shard-*")) + list(out.glob("heldout/shard-*")):
        old.unlink()
    start = time.perf_counter()
    read_stats = {s: Stats() for s in SPLITS}
    # scratch space: each token's first-sight id (4 bytes a token, as much as the shards themselves)
    scratch = {s: out / f".first-sight-ids-{s}.tmp" for s in SPLITS}
    try:
        fp = _first_pass(opts, files, heldout, read_stats, scratch)
        if not fp.stats["train"].tokens:
            raise _no_tokens(opts, files, read_stats["train"])
        train_counts = fp.word_ids.train_counts()
        vocab = Vocabulary.from_counts(train_counts, opts.min_count, opts.max_size)
        if len(vocab) == len(SPECIALS):  # trained on, it "learns" to predict <UNK> (see OOV_WARN_RATE)
            raise _no_words(opts, files, train_counts)
        # int32 shards of both streams (tokens and sentence markers), the scratch ids still beside them
        shard_bytes = 4 * sum(st.tokens + 2 * st.sentences for st in fp.stats.values())
        need_space(out, shard_bytes, "the token shards")
        shards = _second_pass(opts, files, heldout, vocab, out, fp, scratch)
    except Exception as e:
        if isinstance(e, UserError) or not looks_full(e, out):
            raise
        raise _disk_full(out, scratch) from None
    finally:
        for path in scratch.values():
            path.unlink(missing_ok=True)
    _fill_special_counts(vocab, fp.stats["train"])
    vocab.save(out / "vocab.txt")
    manifest = _manifest(opts, files, heldout, vocab, train_counts, fp, read_stats, shards,
                         time.perf_counter() - start)
    tmp = out / (MANIFEST + ".tmp")
    write_synced(tmp, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _checked_out(opts: PrepareOptions, inputs: list[Path]) -> Path:
    """The output directory, writable, and holding none of the inputs where prepare writes: its
    vocabulary, manifest and summary are replaced, and its old shards deleted."""
    out = Path(opts.out)
    names = ["vocab.txt", "vocab.counts.npy", MANIFEST, MANIFEST + ".tmp", "summary.json",
             *(f".first-sight-ids-{s}.tmp" for s in SPLITS)]
    refuse_overwrite([out / name for name in names], inputs, "prepare")
    for path in inputs:
        if any(inside(path, out / s) for s in SPLITS):
            raise OutputError(f"{path}: is also an input of `elmo-dist prepare`, inside {out / path.parent.name}, "
                              "whose old shards prepare deletes; choose another --out")
    return writable_dir(out, "--out")


def _disk_full(out: Path, scratch: dict[str, Path]) -> DiskFull:
    """The disk filled up: every shard written so far removed (the scratch ids go in `prepare`'s
    finally), and the sizes a rerun needs."""
    ids = sum(p.stat().st_size for p in scratch.values() if p.is_file()) // 4
    for old in list(out.glob("train/shard-*")) + list(out.glob("heldout/shard-*")):
        old.unlink()
    return DiskFull(f"{out}: the disk is full ({human(free_bytes(out))} free, {ids:,} tokens' ids written); prepare "
                    "needs about 8 bytes a corpus token until it ends: 4 for the scratch ids (removed at the "
                    f"end) and 4 for the shards, {human(8 * ids)} for the tokens read so far alone")


def _checked_inputs(opts: PrepareOptions) -> tuple[list[Path], list[Path]]:
    files = expand_inputs(opts.inputs)
    heldout = expand_inputs(opts.heldout_files) if opts.heldout_files else []
    if not (0.0 <= opts.heldout_fraction < 1.0):
        raise DataError(f"--heldout-fraction must be in [0, 1), got {opts.heldout_fraction}")
    for flag, value, least in (("--shard-tokens", opts.shard_tokens, 1), ("--max-types", opts.max_types, 2)):
        if value < least:
            raise DataError(f"{flag} must be at least {least}, got {value}")
    if 0 < opts.max_size <= len(SPECIALS):
        raise DataError(f"--max-size {opts.max_size} leaves no room for words: the vocabulary's first "
                        f"{len(SPECIALS)} entries are <S>, </S>, <UNK>; use at least {len(SPECIALS) + 1}, "
                        f"or 0 for no limit")
    return files, heldout


def _where(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0]} and {len(files) - 1} more inputs"


def _no_tokens(opts: PrepareOptions, files: list[Path], read: Stats) -> DataError:
    """The error for a training part without tokens, saying what became of the lines."""
    n, long, empty = read.lines, read.long_lines, read.empty_lines
    limit = f"{MAX_LINE_BYTES >> 20} MiB"
    if n == 0:
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


def _no_words(opts: PrepareOptions, files: list[Path], train_counts: dict[str, int]) -> DataError:
    """The error for a vocabulary of the specials alone, naming the count that would keep a word."""
    words = {w: c for w, c in train_counts.items() if w not in SPECIALS}
    if not words:
        return DataError(f"{_where(files)}: the training text has no words besides <S>, </S>, <UNK>")
    top = max(words, key=words.__getitem__)
    return DataError(f"{_where(files)}: --min-count {opts.min_count} leaves no words in the vocabulary (only "
                     f"<S>, </S>, <UNK>): the most frequent training word, {top!r}, occurs {words[top]:,} times; "
                     f"use --min-count {words[top]} or less")


def _oov_warnings(opts: PrepareOptions, train: Stats) -> list[str]:
    rate = train.oov_tokens / max(train.tokens, 1)
    if rate <= OOV_WARN_RATE:
        return []
    fixes = [f"lower --min-count (now {opts.min_count})"] if opts.min_count > 1 else []
    fixes += [f"raise --max-size (now {opts.max_size:,})"] if opts.max_size else []
    fix = " or ".join(fixes) or f"raise --max-types (now {opts.max_types:,}), which pruned rare words"
    return [f"{rate:.2%} of the training words are outside the vocabulary (more than {OOV_WARN_RATE:.0%}; the "
            f"1B Word Benchmark has 0.28%): the softmax sees each as <UNK>, which makes perplexity look better "
            f"than the model is; {fix}"]


def _fill_special_counts(vocab: Vocabulary, train: Stats) -> None:
    # <S> and </S> occur once per sentence; <UNK> stands for every training token outside the vocab
    vocab.counts[BOS_ID] = vocab.counts[EOS_ID] = train.sentences
    vocab.counts[UNK_ID] = train.oov_tokens


def _manifest(opts, files, heldout, vocab, train_counts, fp: FirstPass, read_stats, shards, seconds) -> dict:
    rs_train, rs_held = read_stats["train"], read_stats["heldout"]
    # a word of 12 characters or fewer is at most 48 bytes in UTF-8, so most words skip the encode
    truncated = sum(c for w, c in train_counts.items() if len(w) > 12 and len(w.encode("utf-8")) > 48)
    return {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "options": asdict(opts),
        "sources": [str(p) for p in files],
        "heldout_sources": [str(p) for p in heldout],
        "vocab_size": len(vocab),
        "vocab_counts_exact": fp.pruned_types == 0,
        "pruned_types": fp.pruned_types,
        "lines": rs_train.lines + rs_held.lines,
        "empty_lines_skipped": rs_train.empty_lines + rs_held.empty_lines,
        "lines_with_bad_utf8": rs_train.lines_with_bad_utf8 + rs_held.lines_with_bad_utf8,
        "long_lines_skipped": rs_train.long_lines + rs_held.long_lines,
        "byte_order_marks_dropped": rs_train.boms + rs_held.boms,
        "train_tokens_over_48_bytes": truncated,
        "train_oov_rate": round(fp.stats["train"].oov_tokens / max(fp.stats["train"].tokens, 1), 6),
        "warnings": _oov_warnings(opts, fp.stats["train"]),
        "splits": {s: {"sentences": st.sentences, "words": st.tokens, "oov_words": st.oov_tokens,
                       "stream_tokens": st.tokens + 2 * st.sentences, "shards": shards[s]}
                   for s, st in fp.stats.items()},
        "seconds": round(seconds, 3),
        "tokens_per_s": round((fp.stats["train"].tokens + fp.stats["heldout"].tokens) / max(seconds, 1e-9), 1),
    }
