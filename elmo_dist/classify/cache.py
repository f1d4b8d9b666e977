"""The layer cache: every document's biLM layers, computed once, kept on disk, shared by every
variant, epoch and later run on the same biLM weights, documents and settings.

    cache = open_or_build(embedder, texts, pieces, {"window_tokens": 100}, cache_root, batch_size, weights, acc)
    layers, mask = cache.batch([3, 17, 42], device)      # [B, L+1, T, D] float32, [B, T]
    means = cache.means([3, 17, 42], device)              # [B, L+1, D] float32, over each document's tokens

`pieces(i)` is document i as the biLM reads it: a list of token lists (a whole document's windows,
or one tagged sentence), each read as `<S> tokens </S>`; the document's layers are its pieces'
layers one after another.

Layout of one cache, `CACHE_ROOT/<key>/`:
- `layers-RRRRR.f16`: float16 `[tokens, L+1, D]`, the documents one after another, each at its own
  length (ragged: no padding to the longest document), read through a memory map;
- `offsets-RRRRR.npy`: int64 `[n + 1]`, where each document of that shard starts;
- `meta.json`, written last: the key's inputs, the shapes and the shards. A directory without it
  is incomplete and never read.

A shard per process (R = its rank): in multi-process fine-tuning each process fills the cache for
its own contiguous share of the documents, and every process reads all shards.

The key is the sha256 of everything the layers depend on: the biLM's weights, the sentence
convention, the tokenizer, the settings that cut documents into pieces (`settings`) and every
document's text, so a changed input makes a new cache and an unchanged one is found again.
Memory while filling is one chunk of documents (about 64 MiB of layers); while training, one batch;
the page cache holds the rest, and pages of a map are not the process's anonymous memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from elmo_dist.embedder import Embedder
from elmo_dist.runtime.accel import broadcast, gather, share

CACHE_FORMAT = 2  # 2: documents read in pieces (whole documents); 1 read each one as a single piece
META = "meta.json"
CHUNK_BYTES = 64 << 20  # layers held in memory while filling, before they go to disk


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(embedder: Embedder, texts: Sequence[str], settings: dict, weights: str) -> str:
    """The content key of one split's cache (see the module docstring)."""
    h = hashlib.sha256()
    settings = {**settings, "format": CACHE_FORMAT, "weights": weights,
                "sentence_boundaries": embedder.sentence_boundaries, "tokenizer": embedder.tokenizer_options}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


class LayerCache:
    """A complete cache directory, memory-mapped: `batch(idx)` gathers documents into a padded batch."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / META).read_text())
        self.n_layers, self.dim = self.meta["n_layers"], self.meta["dim"]
        self.shards, starts, lengths = [], [], []
        for shard in self.meta["shards"]:
            offsets = np.load(self.dir / shard["offsets"])
            tokens = int(offsets[-1])
            data = np.memmap(self.dir / shard["layers"], dtype=np.float16, mode="r",
                             shape=(tokens, self.n_layers, self.dim)) if tokens else None
            self.shards.append(data)
            starts.append(np.stack([np.full(len(offsets) - 1, len(self.shards) - 1), offsets[:-1]], axis=1))
            lengths.append(np.diff(offsets))
        self.where = np.concatenate(starts)  # document -> (shard, first token), int64 [n, 2]
        self.lengths = np.concatenate(lengths)
        self._means: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L+1, T, D] float32 layers (zero past each document's end) and a [B, T] mask, T the
        longest of these documents."""
        lengths = self.lengths[list(idx)]
        longest = int(lengths.max())
        out = np.zeros((len(idx), longest, self.n_layers, self.dim), dtype=np.float16)
        for b, i in enumerate(idx):
            shard, start = self.where[i]
            out[b, : lengths[b]] = self.shards[shard][start : start + lengths[b]]
        # convert, then permute: the conversion reads and writes contiguous memory (half the time)
        layers = torch.from_numpy(out).to(device).float().permute(0, 2, 1, 3)
        mask = torch.arange(longest)[None, :] < torch.from_numpy(lengths)[:, None]
        return layers, mask.to(device)


    def means(self, idx: Sequence[int], device) -> torch.Tensor:
        """[B, L+1, D] float32: each document's layers averaged over its tokens. Every document's means
        are computed on the first call, a document at a time (float32 sums), and kept:
        n * (L+1) * D * 4 bytes, 1.5 KiB a document for the demo's biLM."""
        if self._means is None:
            self._means = np.zeros((len(self), self.n_layers, self.dim), dtype=np.float32)
            for i, ((shard, start), n) in enumerate(zip(self.where, self.lengths)):
                if n:
                    self._means[i] = self.shards[shard][start : start + n].sum(0, dtype=np.float32) / n
        return torch.from_numpy(self._means[list(idx)]).to(device)


@torch.no_grad()
def fill_shard(embedder: Embedder, pieces: Callable[[int], list[list[str]]], doc_ids: range, directory: Path,
               rank: int, batch_size: int, progress: bool = True) -> dict:
    """Compute and write the layers of documents `doc_ids` (in order) as shard `rank` of `directory`.

    Documents go through the biLM a chunk at a time, their pieces sorted by length inside the chunk
    so that a batch holds similar lengths (less padding), then are appended to the shard in
    document order, each document's pieces one after another.
    """
    from tqdm import tqdm

    per_token = embedder.n_layers * embedder.dim * 2
    names = {"layers": f"layers-{rank:05d}.f16", "offsets": f"offsets-{rank:05d}.npy"}
    offsets = np.zeros(len(doc_ids) + 1, dtype=np.int64)
    bar = tqdm(total=len(doc_ids), desc="biLM layers", unit="doc", disable=None if progress else True)
    with open(directory / names["layers"], "wb") as f:
        i = 0
        while i < len(doc_ids):
            chunk, size = [], 0
            while i < len(doc_ids) and (not chunk or size < CHUNK_BYTES):
                chunk.append(pieces(doc_ids[i]))
                size += sum(map(len, chunk[-1])) * per_token
                i += 1
            for arr in _chunk_layers(embedder, [p for doc in chunk for p in doc], batch_size):
                f.write(arr.tobytes())
            first = i - len(chunk)
            offsets[first + 1 : i + 1] = offsets[first] + np.cumsum([sum(map(len, doc)) for doc in chunk])
            bar.update(len(chunk))
    bar.close()
    np.save(directory / names["offsets"], offsets)
    return {**names, "first_doc": doc_ids.start, "docs": len(doc_ids)}


def _chunk_layers(embedder: Embedder, chunk: list[list[str]], batch_size: int) -> list[np.ndarray]:
    """Each piece's layers as float16 [n, L+1, D], in chunk order."""
    out: list[np.ndarray | None] = [None] * len(chunk)
    order = sorted(range(len(chunk)), key=lambda j: len(chunk[j]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        layers, _ = embedder.layers([chunk[j] for j in idx])
        arr = layers.to(torch.float16).permute(0, 2, 1, 3).cpu().numpy()  # [B, T, L+1, D]
        for b, j in enumerate(idx):
            out[j] = arr[b, : len(chunk[j])]
    return out


def finish(directory: Path, final: Path, key: str, shards: list[dict], embedder: Embedder, n_docs: int) -> Path:
    """Write meta.json last and move the cache into place; if another run got there first, use theirs."""
    meta = {"format": CACHE_FORMAT, "key": key, "n_docs": n_docs, "n_layers": embedder.n_layers,
            "dim": embedder.dim, "dtype": "float16", "shards": sorted(shards, key=lambda s: s["first_doc"])}
    (directory / META).write_text(json.dumps(meta, indent=1))
    try:
        os.replace(directory, final)
    except OSError:  # the same cache was finished by another job meanwhile
        shutil.rmtree(directory, ignore_errors=True)
    return final


def open_or_build(embedder: Embedder, texts: Sequence[str], pieces: Callable[[int], list[list[str]]],
                  settings: dict, root: Path, batch_size: int, weights: str, acc, log=None) -> LayerCache:
    """The complete cache for these documents, from disk if it exists, else built now: with several
    processes (`acc`, the run's Accelerator) each fills the shard of its own share of the documents
    (the main one decides and finishes)."""
    key = cache_key(embedder, texts, settings, weights)
    final = Path(root) / key
    if broadcast(acc, (final / META).is_file()):
        if log:
            log(f"reusing the layer cache {final} ({len(texts):,} documents)")
        return LayerCache(final)
    partial = Path(root) / broadcast(acc, f"{key}.partial-{os.getpid()}")
    if acc.is_main_process:
        if final.exists():  # a cache only ever appears complete (renamed into place): this one was damaged
            shutil.rmtree(final)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    acc.wait_for_everyone()
    shard = fill_shard(embedder, pieces, share(acc, len(texts)), partial, acc.process_index, batch_size,
                       acc.is_main_process)
    shards = gather(acc, shard)
    if acc.is_main_process:
        finish(partial, final, key, shards, embedder, len(texts))
    acc.wait_for_everyone()
    return LayerCache(final)
