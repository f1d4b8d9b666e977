"""ELMo representations from a pretrained run, for Python code and `elmo-dist embed`.

    from elmo_dist.embedder import Embedder
    elmo = Embedder.from_run("runs/demo/pretrain")
    vecs = elmo.embed_sentences([["The", "cat", "sat", "."], ["Hello", "!"]])
    vecs[0].shape        # (L+1, 4, 2*projection_dim): the token layer, then each LSTM layer fwd||bwd

`tokenize(text)` applies the tokenizer the pretraining corpus was prepared with, so raw text is
split the way the biLM saw it. A model that reads a char dictionary (an ELMoForManyLangs import,
elmo_dist.data.char_dict) gets its ids from it, and looks each word up by the part its char ids hold
(max_chars_per_token - 2 characters), as ELMoForManyLangs cuts a word before both lookups.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from elmo_dist.config import PretrainConfig
from elmo_dist.data.batching import trim_chars
from elmo_dist.data.char_dict import PAD, CharDictionary
from elmo_dist.data.char_ids import BOS_TOKEN, EOS_TOKEN, char_id_table
from elmo_dist.data.tokenize import build_tokenizer
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import DataError
from elmo_dist.files import HDF5_BYTES_PER_DATASET, atomic_hdf5, check_new_file, refuse_overwrite
from elmo_dist.runs import open_run, resolve_device


class Embedder:
    """The L+1 ELMo layers of tokenized sentences, from a biLM and its vocabulary.

    `sentence_boundaries` (the default, as bilm-tf and AllenNLP do it): every sentence is read as
    `<S> w1 .. wn </S>`, the way the biLM saw sentences in pretraining, and the two marker positions
    are dropped from the output. False feeds the bare tokens (the LSTM layers then differ: their
    state at w1 has not seen `<S>`). `chars`: the char dictionary of a model that reads one
    (model.char_vocab_size > 0; `from_run` finds it beside the weights), None for byte ids.
    """

    def __init__(self, model, vocab: Vocabulary, cfg: PretrainConfig, device: str = "cpu",
                 corpus_options: dict | None = None, sentence_boundaries: bool = True,
                 chars: CharDictionary | None = None):
        want, have = cfg.model.char_vocab_size, 0 if chars is None else len(chars)
        if have != want:  # a model reads a char dictionary (of its size) or byte ids, never the other
            raise DataError(f"model.char_vocab_size is {want}, but the char dictionary given has {have} entries")
        self.model, self.vocab, self.cfg, self.chars = model.to(device).eval(), vocab, cfg, chars
        self.device = torch.device(device)
        self.sentence_boundaries = sentence_boundaries
        opts = corpus_options or {}
        self.tokenizer_options = {"tokenizer": opts.get("tokenizer", "whitespace"),
                                  "lowercase": opts.get("lowercase", False)}
        self.tokenize = build_tokenizer(self.tokenizer_options["tokenizer"], self.tokenizer_options["lowercase"])
        self.home: Path | None = None  # the run or export directory it came from, if any
        self.saved_from: list[Path] = []  # that directory's files (outputs must never overwrite them)
        self.n_layers = cfg.model.n_layers + 1
        self.dim = 2 * cfg.model.projection_dim

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto", sentence_boundaries: bool = True,
                 device_option: str = "config key 'train.device'") -> "Embedder":
        """A run directory (its newest checkpoint), a checkpoint, an export or an import (elmo_dist.runs).
        `device_option` names the setting `device` came from, for the error when it can't be had."""
        device = resolve_device(device, device_option)
        saved = open_run(path)
        vocab = saved.vocab()
        elmo = cls(saved.build_model(device, len(vocab)), vocab, saved.config, device, saved.corpus_options(),
                   sentence_boundaries, saved.char_dictionary())
        elmo.home, elmo.saved_from = saved.home, saved.source_files()
        return elmo

    def source_files(self) -> list[Path]:
        """The files of the run or export this embedder was read from (none if built directly)."""
        return list(self.saved_from)

    def tensors(self, sentences: list[list[str]]) -> dict:
        """The model inputs for a batch of token lists: distinct tokens once, plus an index and lengths."""
        words = sorted({w for s in sentences for w in s})
        row = {w: i for i, w in enumerate(words)}
        lengths = [len(s) for s in sentences]
        index = np.zeros((len(sentences), max(lengths, default=0) or 1), dtype=np.int64)
        for b, s in enumerate(sentences):
            index[b, : len(s)] = [row[w] for w in s]
        words, max_chars = words or ["<S>"], self.cfg.model.max_chars_per_token
        if self.chars is None:
            chars, lookup = trim_chars(char_id_table(words, max_chars)), words
        else:
            chars = trim_chars(self.chars.table(words, max_chars), PAD)
            lookup = [CharDictionary.cut(w, max_chars) for w in words]
        dev = self.device
        return {"chars": torch.from_numpy(chars).to(dev),
                "token_ids": torch.tensor(self.vocab.encode(lookup), device=dev),
                "index": torch.from_numpy(index).to(dev),
                "lengths": torch.tensor(lengths, device=dev)}

    def layers(self, sentences: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L+1, T, D] layers (zero past each sentence's end) and a [B, T] mask, T the longest
        sentence; gradients flow if the model is in training."""
        marked = [[BOS_TOKEN, *s, EOS_TOKEN] for s in sentences] if self.sentence_boundaries else sentences
        t = self.tensors(marked)
        out = torch.stack(self.model.layers(t["chars"], t["token_ids"], t["index"], t["lengths"]), dim=1)
        longest = max((len(s) for s in sentences), default=0)
        if self.sentence_boundaries:  # drop <S>; each </S> lands past its sentence's end, under the mask
            out = out[:, :, 1 : longest + 1]
        lengths = torch.tensor([len(s) for s in sentences], device=self.device)
        mask = torch.arange(out.shape[2], device=self.device)[None, :] < lengths[:, None]
        return out * mask[:, None, :, None], mask

    @torch.no_grad()
    def embed_sentences(self, sentences: list[list[str]], batch_size: int = 32,
                        weights: list[float] | None = None, pool: str | None = None,
                        dtype=np.float32) -> list[np.ndarray]:
        """Per sentence, all layers [L+1, n, D], or their weighted sum [n, D] when `weights` is given.

        `pool="mean"`: one vector per sentence instead, the mean over its n tokens ([L+1, D], or [D]
        with `weights`), summed in float64 so that it is the exact mean of the float32 vectors to
        one float32 rounding. `dtype`: the arrays' type, float32 or float16 (half the bytes; the
        float32 values rounded to nearest, 11 significant bits)."""
        if pool not in (None, "mean"):
            raise DataError(f"pool {pool!r}: expected 'mean' or none")
        out = []
        for i in range(0, len(sentences), batch_size):
            chunk = sentences[i : i + batch_size]
            layers, _ = self.layers(chunk)
            if weights is not None:
                w = torch.tensor(weights, dtype=layers.dtype, device=layers.device)
                layers = torch.einsum("l,bltd->btd", w, layers)
            arr = layers.float().cpu().numpy()
            for b, s in enumerate(chunk):
                x = arr[b, ..., : len(s), :]
                if pool == "mean":
                    x = x.astype(np.float64).mean(axis=-2).astype(np.float32)
                out.append(x.astype(dtype, copy=False))
        return out


def embed_file(run: str | Path, text_file: str | Path, out_file: str | Path, weights: list[float] | None = None,
               batch_size: int = 32, device: str = "auto", sentence_boundaries: bool = True,
               pool: str | None = None, dtype: str = "float32") -> dict:
    """Write ELMo layers for each line of `text_file` to HDF5, in `allennlp elmo`'s layout.

    Dataset "<line number>" (0-based) holds [L+1, n_tokens, D] (or [n_tokens, D] with `weights`);
    with `pool="mean"` one vector per line instead, [L+1, D] (or [D]); `dtype` float32 (the
    default) or float16, half the size (see Embedder.embed_sentences);
    "sentence_to_index" is a JSON string mapping each line to its key. Lines end at "\\n" only (a
    "\\r" before it is dropped), so a form feed or U+2028 inside a line does not shift later keys;
    empty or whitespace-only lines are skipped and counted, so their keys are missing. Byte-order
    marks are dropped (and counted as "byte_order_marks_dropped").

    Before any work: the output's folder must exist and be writable, the output must not be a
    directory or any file the command reads, and the disk must hold the whole file (4 bytes, or 2
    in float16, x layers x dim per token, or per line when pooled, plus HDF5's own bookkeeping).
    The file is written under a temporary name and renamed at the end: a file at `out_file` is
    always complete, and a failure (a disk that fills up anyway) leaves nothing behind.
    """
    from tqdm import tqdm

    from elmo_dist.data.reader import TextLines

    out_file = Path(out_file)
    elmo = Embedder.from_run(run, device, sentence_boundaries, device_option="--device")
    refuse_overwrite([out_file, out_file.with_name(out_file.name + ".tmp")], [text_file, *elmo.source_files()],
                     "embed")
    check_new_file(out_file, "the output file")
    if weights is not None and len(weights) != elmo.n_layers:
        raise DataError(f"--weights: {len(weights)} values given for {elmo.n_layers} layers")
    if dtype not in ("float32", "float16"):
        raise DataError(f"--dtype {dtype}: expected float32 or float16")
    text = TextLines(text_file)  # keys are line numbers as editors count them, not splitlines()'s
    lines = list(text)
    items = [(i, line, elmo.tokenize(line)) for i, line in enumerate(lines) if line.strip()]
    per_vector = np.dtype(dtype).itemsize * elmo.dim * (1 if weights is not None else elmo.n_layers)
    needed = sum(per_vector * (1 if pool else len(t)) + HDF5_BYTES_PER_DATASET + len(line) + 16
                 for _, line, t in items)
    with atomic_hdf5(out_file, needed, "the embeddings") as h5:
        f = h5.file
        for start in tqdm(range(0, len(items), batch_size), desc="embed", unit="batch", disable=None):
            chunk = items[start : start + batch_size]
            vectors = elmo.embed_sentences([t for _, _, t in chunk], batch_size, weights, pool, np.dtype(dtype))
            for (i, _, _), arr in zip(chunk, vectors):
                f.create_dataset(str(i), data=arr)
            if h5.failed:  # the disk filled up after all: nothing more would land
                break
        f.create_dataset("sentence_to_index", data=json.dumps({line: str(i) for i, line, _ in items}))
        f.attrs["layers"] = elmo.n_layers
        f.attrs["dim"] = elmo.dim
        f.attrs["pool"] = pool or "none"
        f.attrs["dtype"] = dtype
    res = {"sentences": len(items), "skipped_empty": len(lines) - len(items), "layers": elmo.n_layers,
           "dim": elmo.dim, "pool": pool or "none", "dtype": dtype, "out": str(out_file)}
    if text.boms:
        res["byte_order_marks_dropped"] = text.boms
    return res
