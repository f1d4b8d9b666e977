"""Ways to combine the biLM's L+1 layers into one representation per token.

- `ScalarMix` (ELMo, eq. 1): gamma * sum_k softmax(w)_k * h_k, with w = 0 and gamma = 1 at the
  start. `trainable=False` is the "frozen equal weights" variant: 1/(L+1) each, nothing learned.
  Optional per-layer layer norm (over the feature dimension, ignoring padding through the mask).
- `LearnedMix`: the equal-weight average plus a gated MLP over the concatenation of all layers,
  per token: mean_k h_k + alpha * Linear(hidden -> D)(ReLU(Linear((L+1)*D -> hidden)(h_0 || ... || h_L))).
  The gate alpha is one learned scalar that starts at 0 (ReZero), so it starts as the `frozen` mix
  and learns any per-token correction, not only a weighted sum. The gate, not a zero last layer:
  Adam moves every weight by about lr per step whatever its gradient, so a zero-initialised last
  layer of `hidden` inputs grew the correction to 1.6x the layer average within 10 steps and 4.9x
  within 50 (BBC News demo, lr 2e-3), and the head restarted from chance; alpha grows by at most
  about lr per step.
- `TopLayer`: the top LSTM layer alone, a baseline.

Each takes layers as one tensor [B, L+1, T, D] and returns [B, T, D]. `is_linear(mix)` says whether
a mix is a fixed linear map of the layers (a scalar mix without layer norm, the top layer), which
then commutes with a mean over tokens: it also takes per-document layer means [B, L+1, D].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elmo_dist.config.finetune import VARIANTS


class ScalarMix(nn.Module):
    def __init__(self, n_layers: int, trainable: bool = True, layer_norm: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers), requires_grad=trainable)
        self.gamma = nn.Parameter(torch.ones(()), requires_grad=trainable)
        self.layer_norm = layer_norm

    def normalized_weights(self) -> torch.Tensor:
        return torch.softmax(self.weights, dim=0)

    def forward(self, layers: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.layer_norm:
            layers = F.layer_norm(layers, layers.shape[-1:])
            if mask is not None:
                layers = layers * mask[:, None, :, None]
        w = self.normalized_weights().to(layers.dtype)
        # one layer at a time: einsum copies the cache's permuted view before its matmul, and a
        # broadcast product writes a [B, L+1, T, D] temporary first; each took about twice the time
        mixed = layers[:, 0] * w[0]
        for k in range(1, layers.shape[1]):
            mixed = mixed + layers[:, k] * w[k]
        return self.gamma.to(layers.dtype) * mixed


class LearnedMix(nn.Module):
    def __init__(self, n_layers: int, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_layers * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].bias)
        # the last layer keeps its default init: with it at zero too, neither it nor the gate would get a gradient
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, layers: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, t, d = layers.shape
        correction = self.mlp(layers.permute(0, 2, 1, 3).reshape(b, t, n * d))
        return layers.mean(1) + self.gate.to(layers.dtype) * correction


class TopLayer(nn.Module):
    def forward(self, layers: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return layers[:, -1]


def is_linear(mix: nn.Module | None) -> bool:
    """True when mix(layers) is the same linear combination of the layers at every token, so that
    the mean over tokens of mix(layers) equals mix(the layers' means)."""
    return isinstance(mix, TopLayer) or (isinstance(mix, ScalarMix) and not mix.layer_norm)


def build_mix(variant: str, n_layers: int, dim: int, layer_norm: bool = False, hidden: int = 256) -> nn.Module:
    if variant == "frozen":
        return ScalarMix(n_layers, trainable=False, layer_norm=layer_norm)
    if variant == "scalar_mix":
        return ScalarMix(n_layers, trainable=True, layer_norm=layer_norm)
    if variant == "learned_fn":
        return LearnedMix(n_layers, dim, hidden)
    if variant == "top":
        return TopLayer()
    raise ValueError(f"unknown variant '{variant}', expected one of {VARIANTS}")
