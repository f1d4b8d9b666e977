"""`elmo-dist prepare`: stream text files into a vocabulary, token-id shards and a held-out split.

    elmo-dist prepare 'corpus/*.txt.gz' --out data/prepared --min-count 3 --heldout-fraction 0.01

Two streaming passes keep memory flat in the corpus size: the first counts words (a bounded
counter that prunes rare words if the number of distinct words passes `--max-types`), the second
writes int32 shards of about `--shard-tokens` tokens. Each shard is one stream of sentences
`<S> w1 .. wn </S> <S> ...`; a word outside the vocabulary gets a shard-local id >= len(vocab),
whose spelling is in the shard's `.oov.txt`, so the char CNN always sees its real characters.
The manifest is written last, atomically: a directory without `manifest.json` is incomplete.
"""
from __future__ import annotations

import array
import glob
import gzip
import json
import os
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from elmo_dist.data.tokenize import build_tokenizer
from elmo_dist.data.vocab import BOS_ID, EOS_ID, UNK_ID, Vocabulary
from elmo_dist.errors import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK_LINES = 4096


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


@dataclass
class Stats:
    lines: int = 0
    empty_lines: int = 0
    lines_with_bad_utf8: int = 0
    long_lines: int = 0
    tokens: int = 0
    sentences: int = 0
    oov_tokens: int = 0


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Globs and paths to a sorted, de-duplicated file list; an unmatched one is an error."""
    files: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [pat]
        if not matches:
            raise DataError(f"{pat}: no file matches this pattern")
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise DataError(f"{p}: input file not found")
            if p not in files:
                files.append(p)
    return files


def _open_bytes(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


# one sentence (or document) per line: a line past this is a broken file or not text, and reading it
# whole would make memory grow with the file, so it is skipped (counted) in bounded chunks
MAX_LINE_BYTES = 1 << 20


_BLOCK = 1 << 22


def _blocks(f, path: Path, stats: Stats) -> Iterator[bytes]:
    """The file as runs of whole lines (no trailing newline), read 4 MiB at a time; lines over
    MAX_LINE_BYTES are dropped and counted without ever being held whole."""
    carry, skipping, line_no = b"", False, 0
    while block := f.read(_BLOCK):
        if b"\x00" in block:
            at = line_no + (carry + block[: block.index(b"\x00")]).count(b"\n") + 1
            raise DataError(f"{path}:{at}: contains NUL bytes; this looks like a binary file, not text")
        if skipping:  # the rest of an over-long line
            nl = block.find(b"\n")
            if nl < 0:
                continue
            block, skipping = block[nl + 1:], False
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            complete, carry = data[:cut], data[cut + 1:]
            line_no += complete.count(b"\n") + 1
            yield complete
        if len(carry) > MAX_LINE_BYTES:
            stats.lines += 1
            stats.long_lines += 1
            carry, skipping = b"", True
    if carry:
        yield carry


def _decoded(complete: bytes, stats: Stats) -> list[str]:
    try:  # the common case: the whole run decodes at once
        return complete.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in complete.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(raw.decode("utf-8", errors="replace"))
                stats.lines_with_bad_utf8 += 1
        return lines


def read_line_runs(path: Path, stats: Stats) -> Iterator[list[str]]:
    """Decoded, stripped, non-empty lines, a run (about 4 MiB) at a time; bad UTF-8 is replaced and
    counted, empty and over-long (> 1 MiB) lines skipped and counted; a binary file is an error."""
    try:
        with _open_bytes(path) as f:
            for complete in _blocks(f, path, stats):
                lines = _decoded(complete, stats)
                if len(complete) > MAX_LINE_BYTES and max(map(len, lines)) > MAX_LINE_BYTES:
                    long = sum(len(line) > MAX_LINE_BYTES for line in lines)  # inside one block: still bounded
                    stats.long_lines += long
                    stats.lines += long
                    lines = [line for line in lines if len(line) <= MAX_LINE_BYTES]
                stats.lines += len(lines)
                kept = [s for s in map(str.strip, lines) if s]
                stats.empty_lines += len(lines) - len(kept)
                yield kept
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip, unreadable file
        raise DataError(f"{path}: cannot read ({e})") from None


def iter_sentences(opts: PrepareOptions, files: list[Path], heldout: list[Path], stats: dict[str, Stats]):
    """(split, tokens) for every non-empty line of the train and held-out inputs."""
    tokenize = build_tokenizer(opts.tokenizer, opts.lowercase)
    line_no, threshold = 0, opts.heldout_fraction * 4294967296.0
    seed_term = opts.seed * 40503
    for path in files:
        for run in read_line_runs(path, stats["train"]):
            for line in run:
                line_no += 1
                # a fixed multiplicative hash of the line number: deterministic, stateless, well spread
                held = not heldout and ((line_no * 2654435761 + seed_term) & 0xFFFFFFFF) < threshold
                words = tokenize(line)
                if words:
                    yield ("heldout" if held else "train"), words
    for path in heldout:
        for run in read_line_runs(path, stats["heldout"]):
            for line in run:
                words = tokenize(line)
                if words:
                    yield "heldout", words


class BoundedCounter:
    """A word counter whose size stays under `max_types` by dropping the rarest words when full."""

    def __init__(self, max_types: int):
        self.max_types = max_types
        self.counts: Counter = Counter()
        self.pruned_types = 0

    def update(self, words: list[str]) -> None:
        self.counts.update(words)
        if len(self.counts) > self.max_types:
            self._prune()

    def _prune(self) -> None:
        threshold = 1
        while len(self.counts) > self.max_types // 2:
            rare = [w for w, c in self.counts.items() if c <= threshold]
            for w in rare:
                del self.counts[w]
            self.pruned_types += len(rare)
            threshold *= 2


class ShardWriter:
    """Accumulates encoded sentences and writes `shard-NNNNN.npy` + `.oov.txt` files."""

    def __init__(self, out_dir: Path, vocab: Vocabulary, shard_tokens: int):
        self.dir, self.vocab, self.shard_tokens = out_dir, vocab, shard_tokens
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        self.buf = array.array("i")
        self.lookup = _ShardLookup(self.vocab.index, len(self.vocab))

    def add(self, words: list[str], stats: Stats) -> None:
        self.stats = stats
        self.buf.append(BOS_ID)
        self.buf.extend(map(self.lookup.__getitem__, words))  # C speed; misses go to __missing__
        self.buf.append(EOS_ID)
        stats.tokens += len(words)
        stats.sentences += 1
        if len(self.buf) >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        name = f"shard-{len(self.shards):05d}"
        tokens = np.frombuffer(self.buf, dtype=np.int32)
        self.stats.oov_tokens += int(np.count_nonzero(tokens >= len(self.vocab)))
        oov = self.lookup.oov
        _write_synced(self.dir / f"{name}.npy", lambda f: np.save(f, tokens))
        _write_synced(self.dir / f"{name}.oov.txt", lambda f: f.write("".join(w + "\n" for w in oov).encode()))
        self.shards.append({"file": f"{self.dir.name}/{name}.npy", "tokens": int(len(tokens)), "oov_types": len(oov)})
        self._reset()


class _ShardLookup(dict):
    """The vocabulary index, plus shard-local ids (vocab size + n) handed to unseen words on first sight."""

    def __init__(self, index: dict, base: int):
        super().__init__(index)
        self.base, self.oov = base, []

    def __missing__(self, word: str) -> int:
        i = self[word] = self.base + len(self.oov)
        self.oov.append(word)
        return i


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _count_pass(opts, files, heldout, stats, cache_paths) -> tuple[BoundedCounter, int]:
    counter, tokens_seen = BoundedCounter(opts.max_types), 0
    pending: list[str] = []
    caches = {k: open(p, "w", encoding="utf-8") for k, p in cache_paths.items()} if cache_paths else None
    for split, words in iter_sentences(opts, files, heldout, stats):
        tokens_seen += len(words)
        if caches is not None:
            caches[split].write(" ".join(words) + "\n")
        if split == "train":
            pending.extend(words)
            if len(pending) > _CHUNK_LINES * 32:
                counter.update(pending)
                pending = []
    counter.update(pending)
    if caches:
        for f in caches.values():
            f.close()
    return counter, tokens_seen


def _encode_pass(opts, files, heldout, vocab, out, cache_paths) -> tuple[dict, dict[str, Stats]]:
    stats = {"train": Stats(), "heldout": Stats()}
    writers = {s: ShardWriter(out / s, vocab, opts.shard_tokens) for s in ("train", "heldout")}
    if cache_paths:  # raw text was tokenized once, in the first pass
        for split, path in cache_paths.items():
            for line in open(path, encoding="utf-8"):
                writers[split].add(line.split(), stats[split])
    else:
        scratch = {"train": Stats(), "heldout": Stats()}
        for split, words in iter_sentences(opts, files, heldout, scratch):
            writers[split].add(words, stats[split])
    for w in writers.values():
        w.flush()
    return {s: w.shards for s, w in writers.items()}, stats


def prepare(opts: PrepareOptions, log=print) -> dict:
    """Run both passes and write the manifest; returns the manifest dict."""
    files = expand_inputs(opts.inputs)
    heldout = expand_inputs(opts.heldout_files) if opts.heldout_files else []
    if not (0.0 <= opts.heldout_fraction < 1.0):
        raise DataError(f"--heldout-fraction must be in [0, 1), got {opts.heldout_fraction}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end, the directory is incomplete
    for old in list(out.glob("train/shard-*")) + list(out.glob("heldout/shard-*")):
        old.unlink()
    start = time.perf_counter()
    read_stats = {"train": Stats(), "heldout": Stats()}
    cache = {s: out / f".tokenized-{s}.tmp" for s in ("train", "heldout")} if opts.tokenizer != "whitespace" else None
    counter, tokens_seen = _count_pass(opts, files, heldout, read_stats, cache)
    if not counter.counts:
        raise DataError(f"{files[0] if len(files) == 1 else 'inputs'}: the corpus has no tokens in its training part")
    vocab = Vocabulary.from_counts(counter.counts, opts.min_count, opts.max_size)
    shards, stats = _encode_pass(opts, files, heldout, vocab, out, cache)
    _fill_special_counts(vocab, counter, stats["train"])
    vocab.save(out / "vocab.txt")
    if cache:
        for p in cache.values():
            p.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    manifest = _manifest(opts, files, heldout, vocab, counter, read_stats, stats, shards, seconds, tokens_seen)
    tmp = out / (MANIFEST + ".tmp")
    _write_synced(tmp, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _fill_special_counts(vocab: Vocabulary, counter: BoundedCounter, train: Stats) -> None:
    # <S> and </S> occur once per sentence; <UNK> stands for every training token outside the vocab
    vocab.counts[BOS_ID] = vocab.counts[EOS_ID] = train.sentences
    vocab.counts[UNK_ID] = train.oov_tokens


def _manifest(opts, files, heldout, vocab, counter, read_stats, stats, shards, seconds, tokens_seen) -> dict:
    rs_train, rs_held = read_stats["train"], read_stats["heldout"]
    truncated = sum(c for w, c in counter.counts.items() if len(w.encode("utf-8")) > 48)
    return {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "options": asdict(opts),
        "sources": [str(p) for p in files],
        "heldout_sources": [str(p) for p in heldout],
        "vocab_size": len(vocab),
        "vocab_counts_exact": counter.pruned_types == 0,
        "pruned_types": counter.pruned_types,
        "lines": rs_train.lines + rs_held.lines,
        "empty_lines_skipped": rs_train.empty_lines + rs_held.empty_lines,
        "lines_with_bad_utf8": rs_train.lines_with_bad_utf8 + rs_held.lines_with_bad_utf8,
        "long_lines_skipped": rs_train.long_lines + rs_held.long_lines,
        "train_tokens_over_48_bytes": truncated,
        "splits": {s: {"sentences": st.sentences, "words": st.tokens, "oov_words": st.oov_tokens,
                       "stream_tokens": st.tokens + 2 * st.sentences, "shards": shards[s]}
                   for s, st in stats.items()},
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens_seen / max(seconds, 1e-9), 1),
    }
