"""The pieces of `prepare` that turn words into token-id shards.

- `WordIds`: word -> id in order of first sight, with each word's training count (the first pass).
- `ShardPlan`: where each shard of a split ends, decided in the first pass from token counts alone.
- `write_cached_shards`: the second pass when the first pass kept its ids on disk: a numpy remap
  from first-sight ids to vocabulary ids, no text read again.
- `LookupShardWriter`: the second pass when it could not (the word list was pruned): the text is
  read again and every word looked up, cutting at the same planned places.

Both second passes write identical shards: int32 `shard-NNNNN.npy` streams in which a word outside
the vocabulary gets a shard-local id V + k (k in order of first appearance in the shard) and its
spelling is line k of `shard-NNNNN.oov.txt`.
"""
from __future__ import annotations

import array
import os
from pathlib import Path

import numpy as np

from elmo_dist.data.char_ids import BOS_TOKEN, EOS_TOKEN
from elmo_dist.data.vocab import SPECIALS, Vocabulary

# the text between two sentences of a run once joined: the ids of </S> and <S> then come from the
# same dict lookup as the words, so a whole run becomes ids with one call
_BETWEEN = f" {EOS_TOKEN} {BOS_TOKEN} "


def run_words(lines: list[str]) -> list[str]:
    """`<S> w1 .. wn </S> <S> ...` for a run of tokenized lines, with one `str.split`."""
    return f"{BOS_TOKEN} {_BETWEEN.join(lines)} {EOS_TOKEN}".split()


class WordIds(dict):
    """Word -> id in order of first sight (the specials are 0, 1, 2, as in the vocabulary), and the
    training count of every id. One dict lookup per token, then counting is a `np.bincount`."""

    def __init__(self, words: list[str] = (), counts: np.ndarray | None = None):
        super().__init__()
        self.words: list[str] = []
        for w in (*SPECIALS, *words):
            self.__missing__(w)
        self.counts = np.zeros(max(1024, 2 * len(self.words)), dtype=np.int64)
        if counts is not None:
            self.counts[: len(counts)] = counts

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self.words)
        self.words.append(word)
        return i

    def ids(self, words: list[str]) -> np.ndarray:
        return np.frombuffer(array.array("i", map(self.__getitem__, words)), dtype=np.int32)

    def count(self, ids: np.ndarray) -> None:
        if len(self.words) > len(self.counts):  # grow by doubling: amortised O(1) per new word
            self.counts = np.concatenate([self.counts, np.zeros(len(self.words), dtype=np.int64)])
        found = np.bincount(ids)
        self.counts[: len(found)] += found

    def train_counts(self) -> dict[str, int]:
        """Every word seen in training text, with its count."""
        counts = self.counts[: len(self.words)].tolist()
        return {w: c for w, c in zip(self.words, counts) if c}

    def pruned(self, keep: int) -> tuple["WordIds", int]:
        """A new WordIds with the specials and the `keep` most frequent other words (ties: first seen),
        and how many words were dropped. Ids change, so ids already handed out are void."""
        counts = self.counts[: len(self.words)]
        order = np.argsort(-counts[len(SPECIALS):], kind="stable")[:keep] + len(SPECIALS)
        order.sort()  # keep first-sight order among the survivors
        kept = [self.words[i] for i in order.tolist()]
        merged = np.concatenate([counts[: len(SPECIALS)], counts[order]])
        return WordIds(kept, merged), len(self.words) - len(SPECIALS) - len(kept)


class ShardPlan:
    """Where each shard of one split ends, as positions in the split's token stream: a shard ends
    after the sentence that brings it to `shard_tokens`, so shards end on sentence boundaries."""

    def __init__(self, shard_tokens: int):
        self.shard_tokens, self.total, self.cuts = shard_tokens, 0, []

    def add(self, lines: list[str], n_stream: int) -> None:
        """Account for a run of lines whose stream (markers included) is `n_stream` tokens long."""
        start = self.cuts[-1] if self.cuts else 0
        if self.total + n_stream - start >= self.shard_tokens:  # a shard fills inside this run
            ends = self.total + np.cumsum([len(line.split()) + 2 for line in lines])
            while ends[-1] - start >= self.shard_tokens:
                start = int(ends[np.searchsorted(ends, start + self.shard_tokens)])
                self.cuts.append(start)
        self.total += n_stream

    def bounds(self) -> list[tuple[int, int]]:
        edges = [0, *self.cuts] + ([self.total] if self.total > (self.cuts[-1] if self.cuts else 0) else [])
        return list(zip(edges[:-1], edges[1:]))


def write_shard(out_dir: Path, index: int, tokens: np.ndarray, oov: list[str]) -> dict:
    name = f"shard-{index:05d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_synced(out_dir / f"{name}.npy", lambda f: np.save(f, tokens))
    write_synced(out_dir / f"{name}.oov.txt", lambda f: f.write("".join(w + "\n" for w in oov).encode()))
    return {"file": f"{out_dir.name}/{name}.npy", "tokens": int(len(tokens)), "oov_types": len(oov)}


def write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def vocab_ids(word_ids: WordIds, vocab: Vocabulary) -> np.ndarray:
    """First-sight id -> vocabulary id, -1 for words outside the vocabulary."""
    table = np.full(len(word_ids.words), -1, dtype=np.int32)
    table[[word_ids[t] for t in vocab.tokens]] = np.arange(len(vocab), dtype=np.int32)
    return table


def write_cached_shards(cache: Path, plan: ShardPlan, table: np.ndarray, words: list[str],
                        vocab_size: int, out_dir: Path) -> tuple[list[dict], int]:
    """The shards of one split from the first pass's ids, and their OOV token count. Memory is
    about 8 bytes per token of one shard, whatever the corpus size."""
    shards, oov_tokens = [], 0
    for i, (a, b) in enumerate(plan.bounds()):
        tokens, oov = _remap(np.fromfile(cache, dtype=np.int32, count=b - a, offset=4 * a), table, words, vocab_size)
        shards.append(write_shard(out_dir, i, tokens, oov))
        oov_tokens += int(np.count_nonzero(tokens >= vocab_size))
        del tokens  # before the next shard is read, so that two never live at once
    return shards, oov_tokens


def _remap(first_sight: np.ndarray, table: np.ndarray, words: list[str], vocab_size: int):
    """Vocabulary ids for one shard, OOV words numbered V, V+1, .. in order of first appearance in
    the shard, exactly as a word-by-word lookup numbers them; and those words' spellings."""
    tokens = table[first_sight]
    oov_at = np.flatnonzero(tokens < 0)
    oov_ids, first = np.unique(first_sight[oov_at], return_index=True)
    by_appearance = np.argsort(first)
    local = np.empty(len(oov_ids), dtype=np.int32)
    local[by_appearance] = np.arange(vocab_size, vocab_size + len(oov_ids), dtype=np.int32)
    tokens[oov_at] = local[np.searchsorted(oov_ids, first_sight[oov_at])]
    return tokens, [words[j] for j in oov_ids[by_appearance].tolist()]


class LookupShardWriter:
    """The second pass by word lookup (after pruning): words go through the vocabulary index, unseen
    ones get shard-local ids on first sight, and shards are cut where the plan says."""

    def __init__(self, out_dir: Path, vocab: Vocabulary, plan: ShardPlan):
        self.dir, self.vocab = out_dir, vocab
        self.ends = [b for _, b in plan.bounds()]  # where each shard ends in the stream
        self.shards: list[dict] = []
        self.pos, self.oov_tokens = 0, 0  # stream position of the next word
        self._reset()

    def _reset(self) -> None:
        self.buf = array.array("i")
        self.lookup = _ShardLookup(self.vocab.index, len(self.vocab))

    def add(self, words: list[str]) -> None:
        """Append a run's stream (`run_words`), writing every shard that ends inside it."""
        start = 0
        while len(self.shards) < len(self.ends) and self.ends[len(self.shards)] <= self.pos + len(words) - start:
            end = start + self.ends[len(self.shards)] - self.pos
            self._encode(words[start:end])
            start = end
            self.flush()
        self._encode(words[start:] if start else words)

    def _encode(self, words: list[str]) -> None:
        self.buf.extend(map(self.lookup.__getitem__, words))  # C speed; misses go to __missing__
        self.pos += len(words)

    def flush(self) -> None:
        if self.buf:
            tokens = np.frombuffer(self.buf, dtype=np.int32)
            self.oov_tokens += int(np.count_nonzero(tokens >= len(self.vocab)))
            self.shards.append(write_shard(self.dir, len(self.shards), tokens, self.lookup.oov))
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
