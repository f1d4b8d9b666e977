"""AllenNLP's `Elmo` and `batch_to_ids` on elmo-dist's biLM: ELMo code written for AllenNLP runs
with only its import line changed.

    from elmo_dist import Elmo, batch_to_ids
    elmo = Elmo(options_file, weight_file, num_output_representations=2, dropout=0.5)
    out = elmo(batch_to_ids([["The", "cat", "sat", "."], ["Hello", "!"]]))
    out["elmo_representations"]   # 2 tensors [B, T, 2*projection_dim], each its own scalar mix
    out["mask"]                   # [B, T] bool

`options_file` and `weight_file` are the official files (bilm-tf's options.json + weights.hdf5,
local paths), or `Elmo(path, None, 2)` takes a run directory, checkpoint, export or import.

As AllenNLP's `allennlp.modules.elmo.Elmo` (v2.x) does: char ids are bilm-tf's plus one, 0 meaning
"no token"; each sentence runs as `<S> tokens </S>` and the two marker positions are dropped
afterwards (`keep_sentence_boundaries=True` keeps them, and the mask with them); each output is its
own `ScalarMix` over the L+1 layers, trainable, or pinned to `scalar_mix_parameters` (pre-softmax
weights, gamma 1, neither trained); `do_layer_norm` normalises each layer by the mean and variance of
all its unmasked values in the batch first; dropout is applied to each output; `requires_grad`
makes the biLM's weights trainable. The biLM itself has no dropout, as in AllenNLP.

One deliberate difference: AllenNLP's biLM is stateful, and each call starts from the LSTM state
the previous batch of the same size left behind, so a sentence's vectors depend on what was
embedded before it. Here every call starts from the zero state, as `elmo-dist embed` and
`Embedder` do: the same sentence always gives the same vectors, equal to AllenNLP's on its first
call. Padding positions are 0 in every output.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from elmo_dist.data.char_ids import BOS_TOKEN, EOS_TOKEN, EOW_CHAR, N_CHARS, PAD_CHAR, char_id_table
from elmo_dist.data.vocab import SPECIALS
from elmo_dist.errors import CheckpointError, ConfigError, DataError
from elmo_dist.interop.elmo_hdf5 import read_official
from elmo_dist.model import BiLM, build_bilm
from elmo_dist.model.scalar_mix import ScalarMix
from elmo_dist.runs import open_run

log = logging.getLogger(__name__)

MAX_CHARS = 50  # AllenNLP's ELMoCharacterMapper.max_word_length: every token is 50 ids
CACHE_BATCH = 1024  # words per char-CNN call when filling the vocab_to_cache table


def batch_to_ids(batch: list[list[str]]) -> torch.Tensor:
    """Tokenized sentences -> LongTensor [B, T, 50] of char ids, T the longest sentence: bilm-tf's
    ids plus one (begin-of-word 259, bytes + 1, end-of-word 260, padding 261), all-zero rows past a
    sentence's end. No `<S>`/`</S>` is added (Elmo adds them), as in AllenNLP."""
    out = torch.zeros(len(batch), max((len(s) for s in batch), default=0), MAX_CHARS, dtype=torch.long)
    for b, sentence in enumerate(batch):
        if sentence:
            out[b, : len(sentence)] = torch.from_numpy(char_id_table(list(sentence), MAX_CHARS).astype(np.int64)) + 1
    return out


def load_bilm(options_file: str | Path, weight_file: str | Path | None) -> BiLM:
    """The biLM of the official files, or of a run, checkpoint, export or import (`weight_file`
    None), on the CPU, without its softmax and without dropout (AllenNLP's biLM has none)."""
    if any(str(p).startswith(("http://", "https://", "s3://")) for p in (options_file, weight_file) if p):
        raise DataError(f"{options_file}: Elmo reads local files only; download the options and weight files first")
    if weight_file is None:
        if Path(options_file).is_file():
            raise DataError(f"{options_file}: weight_file is None, so the first argument must be a run, checkpoint, "
                            "export or import directory; with an options.json, pass the weights.hdf5 too")
        saved = open_run(options_file)
        try:
            m = saved.config.model
            if m.encoder != "char_cnn":
                raise CheckpointError(f"{saved.path}: model.encoder is {m.encoder}; Elmo takes "
                                      "char ids, which only a char_cnn biLM reads (use elmo_dist.embedder.Embedder)")
            if m.char_vocab_size:
                raise CheckpointError(f"{saved.path}: model.char_vocab_size is {m.char_vocab_size}: this biLM reads "
                                      "its own char dictionary (an ELMoForManyLangs import), and Elmo takes "
                                      "batch_to_ids' UTF-8 byte ids (use elmo_dist.embedder.Embedder)")
            if m.char_cnn_word_dim:
                raise CheckpointError(f"{saved.path}: model.char_cnn_word_dim is {m.char_cnn_word_dim}: this biLM "
                                      "also reads word ids, and Elmo takes char ids only "
                                      "(use elmo_dist.embedder.Embedder)")
            model = saved.build_model("cpu", model_cfg=replace(saved.config.model, dropout=0.0))
        finally:
            if saved.pinned:
                saved.pinned.close()
    else:
        m, weights = read_official(options_file, weight_file)
        model = build_bilm(replace(m, dropout=0.0), len(SPECIALS))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.startswith("softmax.") for k in missing), (missing, unexpected)
    model.softmax = None  # the layers never use it; a released vocabulary's softmax is 400M weights
    return model.eval()


def model_char_ids(rows: torch.Tensor, max_chars: int) -> torch.Tensor:
    """AllenNLP's ids of tokens [N, C] -> the model's: bilm-tf's ids (minus one), cut to `max_chars`
    as bilm-tf would have cut the word (or padded to it)."""
    ids = rows - 1
    if ids.shape[1] > max_chars:
        over = (ids[:, max_chars:] != PAD_CHAR).any(1)
        ids = ids[:, :max_chars].clone()
        ids[over, max_chars - 1] = EOW_CHAR
    return nn.functional.pad(ids, (0, max_chars - ids.shape[1]), value=PAD_CHAR)


def masked_layer_norm(layers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AllenNLP's ScalarMix layer norm on [B, L+1, T, D]: each layer minus the mean, over the
    standard deviation, of all its unmasked values in the batch (not per token); padding stays 0."""
    m = mask[:, None, :, None].to(layers.dtype)
    n = mask.sum() * layers.shape[-1]
    mean = (layers * m).sum((0, 2, 3), keepdim=True) / n
    var = (((layers - mean) * m) ** 2).sum((0, 2, 3), keepdim=True) / n
    tiny = 1e-4 if layers.dtype == torch.half else 1e-13  # AllenNLP's tiny_value_of_dtype
    return (layers - mean) / torch.sqrt(var + tiny) * m


class Elmo(nn.Module):
    """AllenNLP's `Elmo`, same arguments and outputs (see the module docstring for the one difference:
    every call starts from the zero LSTM state).

    `vocab_to_cache`: as in AllenNLP, the char-CNN vectors of these words are computed once, and a
    call that passes `word_inputs` ([B, T] indices into this list, 0 = padding, so its first entry
    is the padding token) looks them up instead of running the char CNN; the values are the same,
    only faster. Words outside the list fall back to the char ids, as AllenNLP's do. With
    `requires_grad=True` the char CNN is being trained, so the cache would go stale: it is not used
    (AllenNLP trains a separate copy of it instead, and warns that this is not well defined).
    """

    def __init__(self, options_file: str | Path, weight_file: str | Path | None, num_output_representations: int,
                 requires_grad: bool = False, do_layer_norm: bool = False, dropout: float = 0.5,
                 vocab_to_cache: list[str] | None = None, keep_sentence_boundaries: bool = False,
                 scalar_mix_parameters: list[float] | None = None):
        super().__init__()
        self._bilm = load_bilm(options_file, weight_file)
        for p in self._bilm.parameters():
            p.requires_grad_(requires_grad)
        self.requires_grad, self.do_layer_norm = requires_grad, do_layer_norm
        self.keep_sentence_boundaries = keep_sentence_boundaries
        self.max_chars = self._bilm.token_encoder.max_chars
        self.num_layers = len(self._bilm.forward_lstm.layers) + 1
        if scalar_mix_parameters is not None and len(scalar_mix_parameters) != self.num_layers:
            raise ConfigError(f"scalar_mix_parameters has {len(scalar_mix_parameters)} values; this biLM has "
                              f"{self.num_layers} layers")
        self.num_output_representations = num_output_representations
        for k in range(num_output_representations):
            mix = ScalarMix(self.num_layers, trainable=scalar_mix_parameters is None)
            if scalar_mix_parameters is not None:
                with torch.no_grad():
                    mix.weights.copy_(torch.tensor(scalar_mix_parameters, dtype=mix.weights.dtype))
            self.add_module(f"scalar_mix_{k}", mix)  # AllenNLP's names
        self._dropout = nn.Dropout(p=dropout)
        boundaries = torch.from_numpy(char_id_table([BOS_TOKEN, EOS_TOKEN], self.max_chars).astype(np.int64))
        self.register_buffer("_boundary_chars", boundaries, persistent=False)
        self.register_buffer("_word_cache", self._cache(vocab_to_cache) if vocab_to_cache else None,
                             persistent=False)
        if vocab_to_cache and requires_grad:
            log.warning("Elmo: requires_grad=True trains the char CNN, so vocab_to_cache is not used")

    def get_output_dim(self) -> int:
        return 2 * self._bilm.forward_lstm.layers[0].lstm.proj_size

    @torch.no_grad()
    def _cache(self, words: list[str]) -> torch.Tensor:
        """[2 + V, dim]: the char-CNN vectors of `<S>`, `</S>`, then each word of `words`."""
        ids = torch.from_numpy(char_id_table([BOS_TOKEN, EOS_TOKEN, *words], self.max_chars).astype(np.int64))
        encoder = self._bilm.token_encoder
        return torch.cat([encoder(ids[i : i + CACHE_BATCH]) for i in range(0, len(ids), CACHE_BATCH)])

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict:
        """inputs: char ids [B, T, 50] (`batch_to_ids`; more leading dimensions are flattened and
        restored); word_inputs: [B, T] indices into `vocab_to_cache`, if given. Returns
        {"elmo_representations": num_output_representations tensors [B, T, D], "mask": [B, T] bool}
        (T + 2 positions with `keep_sentence_boundaries`)."""
        shape = inputs.shape
        chars = inputs.reshape(math.prod(shape[:-2]), *shape[-2:])
        words = None
        if word_inputs is not None:
            if self._word_cache is None:
                log.warning("Elmo: word_inputs were passed but there is no vocab_to_cache; using the char ids")
            elif not self.requires_grad:
                words = word_inputs.reshape(math.prod(word_inputs.shape[:-1]), word_inputs.shape[-1])
        layers, mask = self._layers_with_boundaries(chars, words)
        if self.do_layer_norm:
            layers = masked_layer_norm(layers, mask)
        out_mask = mask if self.keep_sentence_boundaries else mask[:, 2:]
        reps = []
        for k in range(self.num_output_representations):
            rep = getattr(self, f"scalar_mix_{k}")(layers)
            if not self.keep_sentence_boundaries:  # tokens sit at 1..n; </S> at n+1 falls under the mask
                rep = rep[:, 1:-1] * out_mask[..., None]
            reps.append(self._dropout(rep))
        lead = shape[:-2]
        return {"elmo_representations": [r.reshape(*lead, r.shape[1], r.shape[2]) for r in reps],
                "mask": out_mask.reshape(*lead, out_mask.shape[1])}

    def _layers_with_boundaries(self, chars: torch.Tensor, words: torch.Tensor | None):
        """[B, L+1, T+2, D] layers of each `<S> tokens </S>` (0 past its end) and their [B, T+2] mask."""
        device = self._boundary_chars.device
        chars = chars.to(device)
        words = None if words is None else words.to(device)
        if words is not None and words.numel() and int(words.max()) >= len(self._word_cache) - 2:
            words = None  # a word outside the cache: the char ids instead, as AllenNLP backs off
        tokens = words > 0 if words is not None else (chars > 0).any(-1)
        b, t = tokens.shape
        lengths = tokens.sum(1)
        if not torch.equal(tokens, torch.arange(t, device=device)[None, :] < lengths[:, None]):
            raise DataError("Elmo: a sentence has an empty position (all-zero char ids) before a token; "
                            "padding goes after each sentence's tokens, as batch_to_ids puts it")
        rows = torch.cumsum(tokens.reshape(-1), 0).reshape(b, t) + 1  # token vectors follow <S>, </S>
        index = torch.zeros(b, t + 2, dtype=torch.long, device=device)
        index[:, 1 : t + 1] = torch.where(tokens, rows, 0)
        index[torch.arange(b, device=device), lengths + 1] = 1
        if words is not None:
            vectors = self._word_cache[torch.cat([torch.tensor([0, 1], device=device), words[tokens] + 2])]
        else:
            vectors = self._char_vectors(chars[tokens])
        layers = torch.stack(self._bilm.layers_of_tokens(vectors[index], lengths + 2), dim=1)
        mask = torch.arange(t + 2, device=device)[None, :] < (lengths + 2)[:, None]
        return layers * mask[:, None, :, None], mask

    def _char_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """The token encoder's vectors of `<S>`, `</S>`, then each row of AllenNLP's ids [N, C]; each
        distinct token once, its columns trimmed to the longest token's (the char CNN restores the rest)."""
        if rows.numel() and (int(rows.min()) < 1 or int(rows.max()) > N_CHARS):
            raise DataError(f"Elmo: char ids of a token must be 1..{N_CHARS} (batch_to_ids' ids)")
        ids = torch.cat([self._boundary_chars, model_char_ids(rows, self.max_chars)])
        longest = int((ids != PAD_CHAR).sum(1).max())
        distinct, where = torch.unique(ids[:, : longest + 1], dim=0, return_inverse=True)
        return self._bilm.token_encoder(distinct)[where]
