"""The bidirectional language model: token encoder -> forward and backward LSTM stacks -> shared softmax.

    bilm = build_bilm(cfg.model, vocab_size)
    out = bilm(batch, state)            # pretraining: summed NLL per direction, new LSTM state
    layers = bilm.layers(chars, token_ids, index, lengths)   # L+1 representations for downstream use

The two directions share only the token encoder and the softmax, as in ELMo. The token layer is
duplicated to [emb; emb] so that all L+1 layers have the same width 2 x projection_dim.
"""
from __future__ import annotations

import torch
from torch import nn

from elmo_dist.data.batching import IGNORE
from elmo_dist.model.lstm import LstmStack
from elmo_dist.model.softmax import SharedSoftmax
from elmo_dist.model.token_encoder import build_token_encoder


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row of x [B, T, ...] within its length; padding stays at the end."""
    if lengths is None:
        return x.flip(1)
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


class BiLM(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        dim = cfg.projection_dim
        self.token_encoder = build_token_encoder(cfg, vocab_size)
        stack = dict(dim=dim, cells=cfg.lstm_dim, n_layers=cfg.n_layers, cell_clip=cfg.cell_clip,
                     proj_clip=cfg.proj_clip, residual=cfg.residual, dropout=cfg.dropout, kernel=cfg.clipped_cell)
        self.forward_lstm = LstmStack(**stack)
        self.backward_lstm = LstmStack(**stack)
        self.output_dropout = nn.Dropout(cfg.dropout)
        self.softmax = SharedSoftmax(cfg.softmax, vocab_size, dim, cfg.n_negative_samples, cfg.adaptive_cutoffs)

    def encode(self, chars, token_ids, fwd_index, bwd_index, state=None, lengths=None):
        """(token layer [B, T, dim] in forward order, every LSTM layer's output per direction [B, T, dim],
        aligned to positions, and the new state)."""
        tokens = self.token_encoder(chars, token_ids)  # [U, dim], once per distinct token
        xf = tokens[fwd_index]
        xb = reverse_padded(tokens[bwd_index], lengths)
        fwd, sf = self.forward_lstm(xf, None if state is None else state[0])
        bwd, sb = self.backward_lstm(xb, None if state is None else state[1])
        bwd = [reverse_padded(h, lengths) for h in bwd]
        return xf, fwd, bwd, (sf, sb)

    def forward(self, batch: dict, state=None, full_softmax: bool = False) -> dict:
        """Summed NLL and target count per direction for a pretraining batch, plus the new state.

        `full_softmax=True` gives the exact NLL (evaluation); otherwise the configured training loss.
        """
        _, fwd, bwd, new_state = self.encode(batch["chars"], batch["token_ids"],
                                                batch["fwd_index"], batch["bwd_index"], state)
        negatives = None
        if not full_softmax and self.softmax.kind == "sampled":
            negatives = self.softmax.sample(fwd[-1].device)  # one set per step, shared by both directions
        out = {"state": new_state}
        for name, top, targets in (("fwd", fwd[-1], batch["fwd_targets"]), ("bwd", bwd[-1], batch["bwd_targets"])):
            keep = targets.reshape(-1) != IGNORE
            h = self.output_dropout(top).reshape(-1, top.shape[-1])[keep]
            t = targets.reshape(-1)[keep]
            nll = self.softmax.full_nll(h, t) if full_softmax else self.softmax.train_nll(h, t, negatives)
            out[f"nll_{name}"] = nll.sum()
            out[f"count_{name}"] = keep.sum()
        return out

    def layers(self, chars, token_ids, index, lengths=None) -> list[torch.Tensor]:
        """The L+1 ELMo layers for sentences: [emb; emb], then each LSTM layer as fwd || bwd, [B, T, 2*dim]."""
        return self.layers_of_tokens(self.token_encoder(chars, token_ids)[index], lengths)

    def layers_of_tokens(self, x: torch.Tensor, lengths=None) -> list[torch.Tensor]:
        """`layers` from the token vectors in place, x [B, T, dim] (the token encoder's output, or a
        cache of it); both LSTM stacks start from the zero state."""
        fwd, _ = self.forward_lstm(x)
        bwd, _ = self.backward_lstm(reverse_padded(x, lengths))
        bwd = [reverse_padded(h, lengths) for h in bwd]
        return [torch.cat([x, x], dim=-1)] + [torch.cat([f, b], dim=-1) for f, b in zip(fwd, bwd)]


def build_bilm(cfg, vocab_size: int) -> BiLM:
    return BiLM(cfg, vocab_size)
