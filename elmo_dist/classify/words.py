"""The task model's own token representation x_k (Peters et al., 2018, section 3.3): a vocabulary over
the task's training words, and optional pretrained word vectors to start it from.

    vocab = TaskVocab.build(train_token_lists, min_count=2, max_size=50000)
    ids = vocab.encode(["the", "cat"])                          # int32 [2]; 0 = padding, 1 = unknown
    table, found = load_vectors("glove.6B.100d.txt", vocab, 100)  # float32 [len(vocab), 100]

The vocabulary comes from the training split only (the validation and test words it lacks are
unknown, as they would be for new text). Words are counted as the biLM's tokenizer splits them, so
that x_k and ELMo_k describe the same tokens.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from elmo_dist.data.reader import TextLines
from elmo_dist.errors import DataError

PAD, UNK = 0, 1


@dataclass
class TaskVocab:
    words: list[str]
    """<pad>, <unk>, then the words by descending count (ties alphabetical, so the order is reproducible)."""

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_count: int = 2, max_size: int = 50000) -> "TaskVocab":
        counts = Counter(t for tokens in token_lists for t in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(["<pad>", "<unk>", *kept[:max_size or None]])

    def encode(self, tokens: list[str]) -> np.ndarray:
        return np.fromiter((self.index.get(t, UNK) for t in tokens), dtype=np.int32, count=len(tokens))


def load_vectors(path: str | Path, vocab: TaskVocab, dim: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """x_k's starting table from a word2vec or GloVe text file: one `word v1 .. v_dim` line per word,
    after an optional `count dim` header (word2vec's). Returns the [len(vocab), dim] table and how
    many of the vocabulary's words the file had; the others start as random vectors of the file's
    own scale (standard deviation), padding as zeros. A line with another number of values, or a
    value that is not a number, is a DataError naming `file:line`."""
    found: dict[int, np.ndarray] = {}
    for n, line in enumerate(TextLines(path), 1):
        parts = line.rstrip().split(" ")
        if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
            if int(parts[1]) != dim:
                raise DataError(f"{path}:1: the vectors have {parts[1]} dimensions; words.dim is {dim}")
            continue
        if len(parts) != dim + 1:
            raise DataError(f"{path}:{n}: {len(parts) - 1} values after the word, words.dim is {dim} "
                            "(a `word v1 .. vd` line per word)")
        i = vocab.index.get(parts[0])
        if i is not None and i not in found:  # the first line of a word wins, as in gensim
            try:
                found[i] = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}:{n}: a value is not a number") from None
    if not found:
        raise DataError(f"{path}: none of the task's {len(vocab) - 2:,} training words has a vector in it")
    loaded = np.stack(list(found.values()))
    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, float(loaded.std()) or 1.0, size=(len(vocab), dim)).astype(np.float32)
    table[list(found)] = loaded
    table[PAD] = 0.0
    return torch.from_numpy(table), len(found)
