"""The word vocabulary, in bilm-tf's plain-text format: `<S>`, `</S>`, `<UNK>`, then words by count.

The file has one token per line (lines end at "\\n"; a "\\r" before it and a byte-order mark at
the start of the file are dropped). Counts, when known, live beside it in `vocab.counts.npy`
(used for the unigram baseline and the log-uniform sampler's order check).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from elmo_dist.data.char_ids import BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, char_id_table
from elmo_dist.data.reader import TextLines
from elmo_dist.errors import DataError

SPECIALS = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2


class Vocabulary:
    """Maps words to ids; ids 0, 1, 2 are `<S>`, `</S>`, `<UNK>`."""

    def __init__(self, tokens: list[str], counts: np.ndarray | None = None):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.counts = counts

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, word: str) -> int:
        return self.index.get(word, UNK_ID)

    def encode(self, words: list[str]) -> list[int]:
        get = self.index.get
        return [get(w, UNK_ID) for w in words]

    def char_ids(self, max_chars: int = 50) -> np.ndarray:
        """The char-id table for every entry, computed once per vocabulary."""
        return char_id_table(self.tokens, max_chars)

    @classmethod
    def from_counts(cls, counts: dict[str, int], min_count: int = 1, max_size: int = 0) -> "Vocabulary":
        """Specials first, then words with count >= min_count by descending count (ties: alphabetical)."""
        kept = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIALS)
        kept.sort(key=counts.__getitem__, reverse=True)  # stable, so equal counts stay alphabetical
        if max_size:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        arr = np.array([0, 0, 0] + [counts[w] for w in kept], dtype=np.int64)
        return cls(list(SPECIALS) + kept, arr)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text("".join(t + "\n" for t in self.tokens), encoding="utf-8")
        if self.counts is not None:
            np.save(path.with_suffix(".counts.npy"), self.counts)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: vocabulary file not found")
        # lines end at "\n" only, so a stray form feed or U+2028 is a bad token on its own line, not
        # two tokens that shift every later id; a leading byte-order mark is dropped
        tokens = list(TextLines(path))
        for i, want in enumerate(SPECIALS):
            if i >= len(tokens) or tokens[i] != want:
                got = tokens[i] if i < len(tokens) else "end of file"
                raise DataError(f"{path}:{i + 1}: expected '{want}' (vocab must start with <S>, </S>, <UNK>), "
                                f"got '{got}'")
        seen: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in seen:
                raise DataError(f"{path}:{i + 1}: duplicate entry '{tok}' (first on line {seen[tok] + 1})")
            if not tok or any(c.isspace() for c in tok):
                raise DataError(f"{path}:{i + 1}: empty or whitespace-containing token {tok!r}")
            seen[tok] = i
        counts_path = path.with_suffix(".counts.npy")
        counts = np.load(counts_path, allow_pickle=False) if counts_path.is_file() else None
        if counts is not None and len(counts) != len(tokens):
            raise DataError(f"{counts_path}: {len(counts)} counts for {len(tokens)} vocabulary entries")
        return cls(tokens, counts)
