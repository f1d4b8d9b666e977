"""The straightforward baseline for `bench_pretrain --compare-naive`: the same flavour built the way
older PyTorch ELMo code (AllenNLP's `_ElmoBiLm` with `LstmCellWithProjection`) runs it.

- the char CNN and highway run on every token position, both directions, at the full 50 chars;
- the LSTM is a per-timestep cell loop with projection and clipping (its input half of the gates
  is still one matrix multiply per layer: a competent loop, not a straw man);
- the softmax is the same module with the same number of shared negatives.

It shares the real model's modules and parameters layout; only `encode` differs.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from elmo_dist.data.char_ids import PAD_CHAR
from elmo_dist.model.bilm import BiLM, reverse_padded


class NaiveBiLM(BiLM):
    def __init__(self, model_cfg, vocab_size: int):
        clipped = dataclasses.replace(model_cfg, cell_clip=model_cfg.cell_clip or 3.0,
                                      proj_clip=model_cfg.proj_clip or 3.0)
        super().__init__(clipped, vocab_size)
        self.max_chars = model_cfg.max_chars_per_token

    def _every_position(self, chars, token_ids, index):
        b, t = index.shape
        flat = index.reshape(-1)
        full = F.pad(chars, (0, self.max_chars - chars.shape[1]), value=PAD_CHAR)  # no trimming either
        return self.token_encoder(full[flat], token_ids[flat]).view(b, t, -1)

    def encode(self, chars, token_ids, fwd_index, bwd_index, state=None, lengths=None):
        xf = self._every_position(chars, token_ids, fwd_index)
        tb = self._every_position(chars, token_ids, bwd_index)
        xb = reverse_padded(tb, lengths)
        fwd, sf = self.forward_lstm(xf, None if state is None else state[0])
        bwd, sb = self.backward_lstm(xb, None if state is None else state[1])
        bwd = [reverse_padded(h, lengths) for h in bwd]
        return xf, fwd, bwd, (sf, sb)


def naive_step(model, optimizer, batch: dict, state, denom: int, clip: float):
    """One plain training step (no Accelerate): loss, backward, clip, update; the carried state."""
    out = model(batch, state)
    ((out["nll_fwd"] + out["nll_bwd"]) / denom).backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return [[(h.detach(), c.detach()) for h, c in d] for d in out["state"]]
