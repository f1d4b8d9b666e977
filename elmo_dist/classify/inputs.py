"""What a task model reads, per split: its units (whole documents, or tagged sentences), their word
ids for x_k, their targets, and where the biLM's layers of each unit come from.

    data = classification_data(cfg, embedder, splits)     # or tagging_data(cfg, tagged_sets)
    sources = layer_sources(cfg, embedder, data, run_dir, acc)   # only if a variant reads ELMo
    ids, layers, mask = batch_inputs(data, sources, "train", [3, 17, 42], device)
    ids, means, mask = batch_inputs(data, sources, "train", [3, 17, 42], device, means=True)

A document is read whole (`data.max_tokens` = 0) in pieces: its sentences packed into windows of
at most `data.window_tokens` tokens, each read by the biLM as `<S> tokens </S>` like a pretraining
line, and the pieces' layers joined in order, so that position t of the layers is token t of the
document, as for its word ids. A tagged sentence is one piece, read exactly as `embed` reads it.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from elmo_dist.classify.cache import open_or_build, weights_digest
from elmo_dist.classify.conll import TaggedSet, read_tagged
from elmo_dist.classify.words import TaskVocab
from elmo_dist.embedder import Embedder
from elmo_dist.errors import DataError
from elmo_dist.runtime.logs import log

SPLITS = ("train", "valid", "test")
# where a sentence ends, as the Moses and whitespace tokenizers leave it: its own token
SENTENCE_ENDS = frozenset({".", "!", "?", "...", "?!", "!?"})


def windows(tokens: list[str], size: int) -> list[list[str]]:
    """`tokens` cut after sentence-final tokens and packed, in order, into pieces of at most `size`
    tokens; a sentence longer than `size` is cut into pieces of `size`."""
    sentences, start = [], 0
    for i, t in enumerate(tokens):
        if t in SENTENCE_ENDS:
            sentences.append(tokens[start : i + 1])
            start = i + 1
    if start < len(tokens):
        sentences.append(tokens[start:])
    pieces: list[list[str]] = []
    for part in (s[j : j + size] for s in sentences for j in range(0, len(s), size)):
        if pieces and len(pieces[-1]) + len(part) <= size:
            pieces[-1] = pieces[-1] + part
        else:
            pieces.append(list(part))
    return pieces or [["<UNK>"]]


@dataclass
class TaskData:
    """One task's units per split. `targets[split]` is a label index per document (classification)
    or an int array of tag indices per sentence (tagging); `pieces(split, i)` is unit i as the biLM
    reads it; `texts` and `settings` key the layer cache."""

    task: str
    names: list[str]
    vocab: TaskVocab
    ids: dict[str, list[np.ndarray]]
    targets: dict[str, object]
    texts: dict[str, list[str]]
    pieces: Callable[[str, int], list[list[str]]]
    settings: dict
    tokens: dict[str, list[list[str]]] = field(default_factory=dict)
    """Tagging: the sentences, for the predictions file."""
    documents: object = None
    """Classification: the documents as read (elmo_dist.classify.documents.Splits), for the TF-IDF row."""

    def __len__(self) -> int:
        return sum(len(v) for v in self.ids.values())


def classification_data(cfg, embedder: Embedder, splits, label_index: dict[str, int]) -> TaskData:
    """Documents tokenized as the biLM's corpus was, cut to data.max_tokens (0: whole), the task
    vocabulary from the training documents."""
    d, w = cfg.data, cfg.words

    def tokens(text: str) -> list[str]:
        return embedder.tokenize(text)[: d.max_tokens or None] or ["<UNK>"]

    texts = {s: [ex.text for ex in getattr(splits, s)] for s in SPLITS}
    train_tokens = [tokens(t) for t in texts["train"]]
    vocab = TaskVocab.build(train_tokens, w.min_count, w.max_size)
    ids = {"train": [vocab.encode(t) for t in train_tokens]}
    del train_tokens  # word ids are what stays in memory, not every token's string
    for s in ("valid", "test"):
        ids[s] = [vocab.encode(tokens(t)) for t in texts[s]]
    targets = {s: np.array([label_index[ex.label] for ex in getattr(splits, s)]) for s in SPLITS}
    return TaskData("classification", list(label_index), vocab, ids, targets, texts,
                    lambda s, i: windows(tokens(texts[s][i]), d.window_tokens),
                    {"max_tokens": d.max_tokens, "window_tokens": d.window_tokens})


def tagged_splits(d, seed: int) -> dict:
    """The train/valid/test TaggedSets of the `data` section: valid and test read from their files, or
    split off train (whole sentences, a seeded shuffle: the same seed, the same split)."""
    train = read_tagged(d.train, d.format, d.tag_column, d.conllu_tag)
    sets = {"train": train}
    rng = np.random.default_rng(seed)
    for split, path, fraction in (("test", d.test, d.test_fraction), ("valid", d.valid, d.valid_fraction)):
        if path:
            sets[split] = read_tagged(path, d.format, d.tag_column, d.conllu_tag)
            continue
        rest = sets["train"]
        order = rng.permutation(len(rest.sentences))
        k = max(1, round(fraction * len(order)))
        held, kept = sorted(order[:k].tolist()), sorted(order[k:].tolist())
        if not kept:
            raise DataError(f"{d.train}: {len(order)} sentence(s) leave none for training once the {split} "
                            f"set ({fraction:.0%}) is split off; give data.{split} a file")
        sets[split] = TaggedSet([rest.sentences[i] for i in held], [rest.tags[i] for i in held],
                                f"{rest.source} ({split} split)", {})
        sets["train"] = TaggedSet([rest.sentences[i] for i in kept], [rest.tags[i] for i in kept], rest.source,
                                  rest.skipped)
    return sets


def tagging_data(cfg, sets: dict) -> TaskData:
    """Tagged sentences per split (`sets`: split -> TaggedSet); the vocabulary from the training
    sentences. The tag set is the training tags, then any tag only a valid or test file holds (real
    sets have them: Brown's `dt$` occurs once, outside the training files): the tagger has a score
    for it but never learns to predict it, so its tokens count as errors, and a warning says so."""
    w = cfg.words
    trained = {t for tags in sets["train"].tags for t in tags}
    names = sorted(trained)
    unseen = Counter(t for s in ("valid", "test") for tags in sets[s].tags for t in tags if t not in trained)
    if unseen:
        log.warning("%d tag(s) of the valid/test sentences never occur in the training sentences (%s): the "
                    "tagger cannot predict them and their %d token(s) count as errors",
                    len(unseen), ", ".join(f"{t} x{n}" for t, n in sorted(unseen.items())), sum(unseen.values()))
    names += sorted(unseen)
    index = {t: i for i, t in enumerate(names)}
    targets = {s: [np.array([index[t] for t in tags], dtype=np.int64) for tags in sets[s].tags] for s in SPLITS}
    vocab = TaskVocab.build(sets["train"].sentences, w.min_count, w.max_size)
    sentences = {s: sets[s].sentences for s in SPLITS}
    return TaskData("tagging", names, vocab, {s: [vocab.encode(t) for t in sentences[s]] for s in SPLITS},
                    targets, {s: ["\x1f".join(t) for t in sentences[s]] for s in SPLITS},
                    lambda s, i: [sentences[s][i]], {"unit": "sentence"}, tokens=sentences)


class LiveLayers:
    """Layers computed by the biLM for each batch (a trainable biLM, or `bilm.cache=false`), with
    the cache's shapes: [B, L+1, T, D] and a [B, T] mask; gradients flow when the biLM trains."""

    def __init__(self, embedder: Embedder, pieces: Callable[[int], list[list[str]]], n: int, trainable: bool):
        self.embedder, self.pieces, self.n, self.trainable = embedder, pieces, n, trainable

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        docs = [self.pieces(i) for i in idx]
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            flat, mask = self.embedder.layers([p for doc in docs for p in doc])  # [P, L+1, t, D]
            joined, k = [], 0
            for doc in docs:
                parts = [flat[k + j, :, : len(p)] for j, p in enumerate(doc)]
                joined.append(torch.cat(parts, dim=1))
                k += len(doc)
            longest = max(x.shape[1] for x in joined)
            layers = torch.stack([torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[1])) for x in joined])
        lengths = torch.tensor([x.shape[1] for x in joined], device=layers.device)
        return layers, torch.arange(longest, device=layers.device)[None, :] < lengths[:, None]

    def means(self, idx: list[int], device) -> torch.Tensor:
        """[B, L+1, D]: each document's layers averaged over its tokens (as LayerCache.means)."""
        layers, mask = self.batch(idx, device)
        m = mask[:, None, :, None].to(layers.dtype)
        return (layers * m).sum(2) / m.sum(2).clamp(min=1)


def _cache_root(cfg, embedder: Embedder, run_dir: Path) -> Path:
    if cfg.bilm.cache_dir:
        return Path(cfg.bilm.cache_dir)
    beside = (embedder.home or run_dir) / "layer_cache"
    try:
        beside.mkdir(parents=True, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    log.warning("%s is not writable; the layer cache goes to %s", beside, run_dir / "layer_cache")
    return run_dir / "layer_cache"


def layer_sources(cfg, embedder: Embedder, data: TaskData, run_dir: Path, acc) -> dict:
    """Per split, where the task model's batches of layers come from: the on-disk cache of a frozen
    biLM (built on first use), or the live biLM."""
    n = {s: len(data.ids[s]) for s in SPLITS}
    if cfg.bilm.trainable or not cfg.bilm.cache:
        return {s: LiveLayers(embedder, lambda i, s=s: data.pieces(s, i), n[s], cfg.bilm.trainable) for s in SPLITS}
    root, weights = _cache_root(cfg, embedder, run_dir), weights_digest(embedder.model)
    t0 = time.perf_counter()
    sources = {s: open_or_build(embedder, data.texts[s], lambda i, s=s: data.pieces(s, i), data.settings, root,
                                cfg.bilm.batch_size, weights, acc, log=log.info) for s in SPLITS}
    log.info("layer caches of %s %s ready in %.1f s under %s", f"{sum(n.values()):,}",
             "sentences" if data.task == "tagging" else "documents", time.perf_counter() - t0, root)
    return sources


def batch_inputs(data: TaskData, sources: dict | None, split: str, idx: list[int], device, means: bool = False):
    """(word ids [B, T] int64, layers [B, L+1, T, D] or None when `sources` is None, mask [B, T]);
    with `means`, each document's layers averaged over its tokens, [B, L+1, D], instead of the
    layers (for a task model whose reads_layer_means is true)."""
    rows = [data.ids[split][i] for i in idx]
    longest = max(len(r) for r in rows)
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(longest)[None, :] < lengths[:, None]).to(device)
    if sources is None:
        return torch.from_numpy(ids).to(device), None, mask
    if means:
        return torch.from_numpy(ids).to(device), sources[split].means(idx, device), mask
    layers, layer_mask = sources[split].batch(idx, device)
    if layers.shape[2] != longest:  # the cache and the word ids come from one tokenization: never expected
        raise RuntimeError(f"{split}: layers for {layers.shape[2]} positions, word ids for {longest}")
    return torch.from_numpy(ids).to(device), layers, mask
