"""Read a prepared-data directory: the manifest, the vocabulary and memory-mapped token shards.

    corpus = PreparedCorpus("data/prepared")
    stream = corpus.stream("train", order=[2, 0, 1])   # shards in this order, as one stream
    ids = stream.read(1000, 1020)                        # global ids; >= len(vocab) means OOV
    chars = corpus.char_ids(np.unique(ids))              # the ELMo char ids of those tokens

OOV words keep their spelling: shard k's local id V + j becomes the global id V + base_k + j,
and `char_ids` computes the real characters of such words, lazily, per shard.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from elmo_dist.data.char_ids import char_id_table
from elmo_dist.data.prepare_work import FORMAT_VERSION, MANIFEST
from elmo_dist.data.vocab import SPECIALS, UNK_ID, Vocabulary
from elmo_dist.errors import DataError


class Shard:
    def __init__(self, path: Path, vocab_size: int, oov_base: int):
        if not path.is_file():
            raise DataError(f"{path}: shard listed in the manifest is missing")
        try:
            self.tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: not a token shard ({e})") from None
        self.oov_path = path.with_suffix(".oov.txt")
        self.vocab_size, self.oov_base = vocab_size, oov_base
        self._oov_words: list[str] | None = None

    @property
    def oov_words(self) -> list[str]:
        if self._oov_words is None:
            self._oov_words = self.oov_path.read_text(encoding="utf-8").splitlines()
        return self._oov_words

    def __len__(self) -> int:
        return len(self.tokens)


class TokenStream:
    """Shards in a given order, read as one long stream of global token ids."""

    def __init__(self, shards: list[Shard], order: list[int]):
        self.shards = [shards[i] for i in order]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Global ids of stream positions [start, stop), as int64."""
        out = np.empty(stop - start, dtype=np.int64)
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            shard, s0 = self.shards[k], int(self.starts[k])
            take = min(stop, int(self.starts[k + 1])) - pos
            chunk = np.asarray(shard.tokens[pos - s0 : pos - s0 + take], dtype=np.int64)
            # shard-local OOV ids -> global ones
            chunk[chunk >= shard.vocab_size] += shard.oov_base
            out[pos - start : pos - start + take] = chunk
            pos += take
            k += 1
        return out


class PreparedCorpus:
    """A directory written by `elmo-dist prepare`."""

    def __init__(self, path: str | Path, max_chars: int = 50):
        self.dir = Path(path)
        manifest_path = self.dir / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{self.dir}: no {MANIFEST}; not a prepared corpus, or `elmo-dist prepare` did not finish")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{manifest_path}: not valid JSON ({e})") from None
        if self.manifest.get("format_version") != FORMAT_VERSION or not self.manifest.get("complete"):
            raise DataError(f"{manifest_path}: unsupported or incomplete manifest "
                            f"(format {self.manifest.get('format_version')})")
        self.vocab = Vocabulary.load(self.dir / "vocab.txt")
        if len(self.vocab) <= len(SPECIALS):  # `prepare` refuses these now; older versions wrote them
            raise DataError(f"{self.dir / 'vocab.txt'}: the vocabulary has no words, only <S>, </S>, <UNK> (a "
                            f"--min-count or --max-size removed them all), so every target would be <UNK>; "
                            f"prepare the corpus again with a lower --min-count")
        self.max_chars = max_chars
        self._vocab_chars: np.ndarray | None = None
        self._oov_chars: dict[int, np.ndarray] = {}
        self.shards: dict[str, list[Shard]] = {}
        v = len(self.vocab)
        base = 0
        for split in ("train", "heldout"):
            self.shards[split] = []
            for entry in self.manifest["splits"][split]["shards"]:
                self.shards[split].append(Shard(self.dir / entry["file"], v, base))
                base += entry["oov_types"]
        self.oov_bases = np.array([s.oov_base + v for s in self.all_shards] + [v + base], dtype=np.int64)

    @property
    def all_shards(self) -> list[Shard]:
        return self.shards["train"] + self.shards["heldout"]

    def stream(self, split: str, order: list[int] | None = None) -> TokenStream:
        shards = self.shards[split]
        if not shards:
            raise DataError(f"{self.dir}: the '{split}' split is empty; prepare it with held-out text")
        return TokenStream(shards, order if order is not None else list(range(len(shards))))

    def word(self, gid: int) -> str:
        """The spelling of a global id."""
        v = len(self.vocab)
        if gid < v:
            return self.vocab.tokens[gid]
        k = int(np.searchsorted(self.oov_bases, gid, side="right")) - 1
        return self.all_shards[k].oov_words[gid - int(self.oov_bases[k])]

    def char_ids(self, gids: np.ndarray) -> np.ndarray:
        """ELMo char ids [len(gids), max_chars] for global ids (vocab words and OOV words alike)."""
        if self._vocab_chars is None:
            self._vocab_chars = self.vocab.char_ids(self.max_chars)
        v = len(self.vocab)
        out = np.empty((len(gids), self.max_chars), dtype=np.int16)
        known = gids < v
        out[known] = self._vocab_chars[gids[known]]
        for j in np.flatnonzero(~known):
            out[j] = self._oov_char_row(int(gids[j]))
        return out

    def _oov_char_row(self, gid: int) -> np.ndarray:
        k = int(np.searchsorted(self.oov_bases, gid, side="right")) - 1
        if k not in self._oov_chars:
            self._oov_chars[k] = char_id_table(self.all_shards[k].oov_words, self.max_chars)
        return self._oov_chars[k][gid - int(self.oov_bases[k])]

    def softmax_ids(self, gids: np.ndarray) -> np.ndarray:
        """Global ids as softmax targets: every OOV word is <UNK>."""
        return np.where(gids < len(self.vocab), gids, UNK_ID)
