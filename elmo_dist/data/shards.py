"""The pieces of `prepare` that turn words into token-id shards.

- `WordIds`: word -> id in order of first sight, with each word's training count: a segment's
  own word list (prepare_count), and the merged counts of the whole corpus (prepare_merge).
- `ShardPlan`: where each shard of a split ends, decided from the lines' token counts alone.
- `write_shard`: one shard, an int32 `shard-NNNNN.npy` stream in which a word outside the
  vocabulary gets a shard-local id V + k (k in order of first appearance in the shard) and its
  spelling is line k of `shard-NNNNN.oov.txt` (prepare_encode).
"""
from __future__ import annotations

import array
import os
from pathlib import Path

import numpy as np

from elmo_dist.data.char_ids import BOS_TOKEN, EOS_TOKEN
from elmo_dist.data.vocab import SPECIALS

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

    def _grow(self) -> None:
        if len(self.words) > len(self.counts):  # grow by doubling: amortised O(1) per new word
            self.counts = np.concatenate([self.counts, np.zeros(len(self.words), dtype=np.int64)])

    def count(self, ids: np.ndarray) -> None:
        self._grow()
        found = np.bincount(ids)
        self.counts[: len(found)] += found

    def add_counts(self, words: list[str], counts: np.ndarray) -> None:
        """Add `counts[i]` to the count of `words[i]` (distinct words), new words getting new ids."""
        ids = self.ids(words)
        self._grow()
        self.counts[ids] += counts

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

    def add_lengths(self, lengths: np.ndarray) -> None:
        """Account for lines whose streams (markers included) are `lengths` tokens long, in order."""
        n = int(lengths.sum(dtype=np.int64))
        start = self.cuts[-1] if self.cuts else 0
        if n and self.total + n - start >= self.shard_tokens:  # a shard fills among these lines
            ends = self.total + np.cumsum(lengths, dtype=np.int64)
            while ends[-1] - start >= self.shard_tokens:
                start = int(ends[np.searchsorted(ends, start + self.shard_tokens)])
                self.cuts.append(start)
        self.total += n

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
