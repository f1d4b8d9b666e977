"""A text classifier over mixed ELMo layers: mix -> per-token layer or BiLSTM -> pooling -> MLP.

    clf = TextClassifier(build_mix("scalar_mix", 3, 128), dim=128, n_classes=5)
    logits = clf(layers, mask)            # layers [B, L+1, T, D], mask [B, T]

The `pool` encoder first applies a per-token Linear -> ReLU (`token_dim`), which turns the small
biLM features into many word and phrase detectors; without it, pooling the raw layers underfits
news topics. Pooling then concatenates the masked mean and max over tokens (mean_max, the default: the mean sees the
whole document, the max picks out the few topic words that decide a news category). The BiLSTM
encoder runs over the mixed tokens and pools its outputs the same way.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    parts = []
    if how in ("mean", "mean_max"):
        parts.append((x * m).sum(1) / m.sum(1).clamp(min=1))
    if how in ("max", "mean_max"):
        parts.append(x.masked_fill(m == 0, float("-inf")).amax(1).clamp(min=-1e4))
    return torch.cat(parts, dim=-1)


class TextClassifier(nn.Module):
    def __init__(self, mix: nn.Module, dim: int, n_classes: int, encoder: str = "pool", pooling: str = "mean_max",
                 hidden: int = 256, dropout: float = 0.3, bilstm_dim: int = 128, token_dim: int = 512):
        super().__init__()
        self.mix, self.encoder_kind, self.pooling = mix, encoder, pooling
        self.dropout = nn.Dropout(dropout)
        self.token_ff = None
        if encoder == "pool" and token_dim:
            self.token_ff = nn.Sequential(nn.Linear(dim, token_dim), nn.ReLU())
            dim = token_dim
        if encoder == "bilstm":
            self.bilstm = nn.LSTM(dim, bilstm_dim, batch_first=True, bidirectional=True)
            dim = 2 * bilstm_dim
        pooled = dim * (2 if pooling == "mean_max" else 1)
        # biLM features are small and differ in scale from layer to layer and between mean and max;
        # normalising the pooled vector lets one learning rate suit every variant
        self.mlp = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, layers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.mix(layers, mask))
        if self.token_ff is not None:
            x = self.token_ff(x)
        if self.encoder_kind == "bilstm":
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.bilstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=mask.shape[1])
        return self.mlp(masked_pool(x, mask, self.pooling))
