"""Task models with ELMo added the way the ELMo paper does it (Peters et al., 2018, section 3.3).

    inputs = TokenInputs(vocab_size=20000, word_dim=128, mix=build_mix("scalar_mix", 3, 128), elmo_dim=128)
    clf = Classifier(inputs, n_classes=5)                    # logits [B, n_classes]
    tagger = Tagger(inputs, n_tags=17, crf=True)            # emissions [B, T, n_tags]
    out = clf(ids, layers, mask)   # ids [B, T] task-vocabulary ids, layers [B, L+1, T, D] (or None), mask [B, T]
    if clf.reads_layer_means:      # the same logits from each document's layer means [B, L+1, D]
        out = clf(ids, layer_means, mask)

"We simply freeze the weights of the biLM and then concatenate the ELMo vector ELMo_k^task with
x_k and pass the ELMo enhanced representation [x_k; ELMo_k^task] into the task RNN" (section 3.3):
x_k is the task model's own token representation, here a word embedding over the task's training
vocabulary (`word_dim`; 0 drops it, leaving the biLM's layers alone), and ELMo_k^task the mixed
biLM layers (`mix`; None for the `no_elmo` baseline, which reads no biLM layer at all). Dropout on
ELMo is the paper's regulariser (`elmo_dropout`). The paper's second injection, at the task
model's output ([h_k; ELMo_k^task] with a mix of its own), is `output_mix`.

Classifier: inputs -> per-token Linear -> ReLU (`token_dim`) or a BiLSTM -> [+ output ELMo] ->
masked mean||max pooling over the whole document -> LayerNorm -> MLP. A classifier that only
averages (mean pooling, no per-token layer, linear mixes, no dropout before the pooling) computes
mean_t(sum_k s_k h_k,t) = sum_k s_k mean_t(h_k,t): it reads the layers averaged over each document,
[B, L+1, D] instead of [B, L+1, T, D], the same model at a fraction of the cost. Tagger: inputs -> BiLSTM ->
[+ output ELMo] -> per-token Linear -> tag scores, decoded per token or by a linear-chain CRF.
"""
from __future__ import annotations

import torch
from torch import nn

from elmo_dist.model.crf import LinearChainCRF
from elmo_dist.model.scalar_mix import is_linear


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout: in training each element is zeroed with probability p and
    the rest scaled by 1 / (1 - p); in evaluation (or with p = 0) the input passes unchanged.

    On the CPU the keep mask is drawn as uniform floats compared with p, because torch's CPU
    Bernoulli sampler draws one element at a time, on one thread, where torch.rand is vectorised
    (figures: benchmarks/bench_dropout.py, docs/performance.md); dropout over every token of whole
    documents was the largest part of a fine-tuning step. Elsewhere (CUDA) nn.functional.dropout's
    fused kernel."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        keep = (torch.rand(x.shape, dtype=x.dtype, device=x.device) >= self.p).to(x.dtype)
        return x * keep.mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def masked_pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, T, D] -> [B, D] (mean or max) or [B, 2D] (mean_max) over the unmasked tokens."""
    m = mask.unsqueeze(-1).to(x.dtype)
    parts = []
    if how in ("mean", "mean_max"):
        parts.append((x * m).sum(1) / m.sum(1).clamp(min=1))
    if how in ("max", "mean_max"):
        parts.append(x.masked_fill(m == 0, float("-inf")).amax(1).clamp(min=-1e4))
    return torch.cat(parts, dim=-1)


def pool_parts(parts: list[torch.Tensor], mask: torch.Tensor, how: str) -> torch.Tensor:
    """masked_pool(torch.cat(parts, -1), mask, how), the same layout ([all means; all maxes] for
    mean_max), without building the concatenation: the pooling works feature by feature."""
    hows = ("mean", "max") if how == "mean_max" else (how,)
    return torch.cat([masked_pool(p, mask, h) for h in hows for p in parts], dim=-1)


class TokenInputs(nn.Module):
    """[x_k; ELMo_k] per token: the task's word embedding and/or the mixed biLM layers."""

    def __init__(self, vocab_size: int = 0, word_dim: int = 0, mix: nn.Module | None = None, elmo_dim: int = 0,
                 elmo_dropout: float = 0.0, vectors: torch.Tensor | None = None, train_words: bool = True):
        super().__init__()
        if not word_dim and mix is None:
            raise ValueError("a task model needs word vectors (word_dim > 0), the biLM's layers (a mix), or both")
        self.words = nn.Embedding(vocab_size, word_dim, padding_idx=0) if word_dim else None
        if self.words is not None and vectors is not None:
            self.words.weight.data.copy_(vectors)  # rows of words the vectors file lacks stay random
        if self.words is not None:
            self.words.weight.requires_grad_(train_words)
        self.mix, self.elmo_dropout = mix, Dropout(elmo_dropout)
        self.dim = word_dim + (elmo_dim if mix is not None else 0)

    @property
    def reads_elmo(self) -> bool:
        return self.mix is not None

    def parts(self, ids: torch.Tensor, layers: torch.Tensor | None, mask: torch.Tensor) -> list[torch.Tensor]:
        """[x_k] and/or [ELMo_k], each [B, T, its dim]: what forward concatenates."""
        parts = []
        if self.words is not None:
            parts.append(self.words(ids))
        if self.mix is not None:
            parts.append(self.elmo_dropout(self.mix(layers, mask)))
        return parts

    def forward(self, ids: torch.Tensor, layers: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        parts = self.parts(ids, layers, mask)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _bilstm(x: torch.Tensor, mask: torch.Tensor, lstm: nn.LSTM) -> torch.Tensor:
    lengths = mask.sum(1).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=mask.shape[1])[0]


class _OutputElmo(nn.Module):
    """[h_k; ELMo_k] at the task model's output, with a mix of its own (section 3.3)."""

    def __init__(self, mix: nn.Module | None, dropout: float):
        super().__init__()
        self.mix, self.dropout = mix, Dropout(dropout)

    def extra(self, layers: torch.Tensor | None, mask: torch.Tensor) -> list[torch.Tensor]:
        """[ELMo_k] of the output mix, or [] without one."""
        return [] if self.mix is None else [self.dropout(self.mix(layers, mask))]

    def forward(self, h: torch.Tensor, layers: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        extra = self.extra(layers, mask)
        return torch.cat([h, *extra], dim=-1) if extra else h


class Classifier(nn.Module):
    """One label per document, read whole: inputs -> encoder -> [output ELMo] -> pooling -> MLP."""

    def __init__(self, inputs: TokenInputs, n_classes: int, encoder: str = "pool", pooling: str = "mean_max",
                 hidden: int = 256, dropout: float = 0.3, bilstm_dim: int = 128, token_dim: int = 512,
                 output_mix: nn.Module | None = None, elmo_dim: int = 0, elmo_dropout: float = 0.0):
        super().__init__()
        self.inputs, self.encoder_kind, self.pooling = inputs, encoder, pooling
        self.mix = inputs.mix  # the input mix, whose weights the reports show
        self.dropout = Dropout(dropout)
        dim, self.token_ff, self.bilstm = inputs.dim, None, None
        if encoder == "pool" and token_dim:
            self.token_ff = nn.Sequential(nn.Linear(dim, token_dim), nn.ReLU())
            dim = token_dim
        if encoder == "bilstm":
            self.bilstm = nn.LSTM(dim, bilstm_dim, batch_first=True, bidirectional=True)
            dim = 2 * bilstm_dim
        self.output = _OutputElmo(output_mix, elmo_dropout)
        dim += elmo_dim if output_mix is not None else 0
        pooled = dim * (2 if pooling == "mean_max" else 1)
        # the features differ in scale between words, layers, mean and max; normalising the pooled
        # vector lets one learning rate suit every variant
        self.mlp = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, hidden), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    @property
    def reads_layer_means(self) -> bool:
        """Whether forward also takes each document's layer means [B, L+1, D] for `layers` and gives the
        same logits: every step between the layers and the pooling is linear and the same at every
        token (no per-token layer or BiLSTM, mean pooling, linear mixes, no dropout on the way)."""
        return (self.token_ff is None and self.bilstm is None and self.pooling == "mean"
                and self.dropout.p == 0 and self.inputs.elmo_dropout.p == 0 and self.output.dropout.p == 0
                and self.inputs.mix is not None and is_linear(self.inputs.mix)
                and (self.output.mix is None or is_linear(self.output.mix)))

    def forward(self, ids: torch.Tensor, layers: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        if layers is not None and layers.dim() == 3:
            if not self.reads_layer_means:
                raise ValueError("this classifier reads per-token layers [B, L+1, T, D], not layer means")
            words = [masked_pool(self.inputs.words(ids), mask, "mean")] if self.inputs.words is not None else []
            mixes = [self.inputs.mix] + ([self.output.mix] if self.output.mix is not None else [])
            return self.mlp(torch.cat(words + [m(layers) for m in mixes], dim=-1))
        if self.token_ff is None and self.bilstm is None:
            # nothing combines x_k's and ELMo_k's features before the pooling, which works feature by
            # feature: pooling each part alone gives the same vector without first copying every
            # token's parts into one tensor
            parts = [self.dropout(p) for p in self.inputs.parts(ids, layers, mask)]
            return self.mlp(pool_parts(parts + self.output.extra(layers, mask), mask, self.pooling))
        x = self.dropout(self.inputs(ids, layers, mask))
        if self.token_ff is not None:
            x = self.token_ff(x)
        if self.bilstm is not None:
            x = _bilstm(x, mask, self.bilstm)
        return self.mlp(masked_pool(self.output(x, layers, mask), mask, self.pooling))


class Tagger(nn.Module):
    """One tag per token: inputs -> BiLSTM -> [output ELMo] -> tag scores (-> CRF)."""

    def __init__(self, inputs: TokenInputs, n_tags: int, bilstm_dim: int = 128, dropout: float = 0.3,
                 crf: bool = False, output_mix: nn.Module | None = None, elmo_dim: int = 0, elmo_dropout: float = 0.0):
        super().__init__()
        self.inputs, self.mix = inputs, inputs.mix
        self.dropout = Dropout(dropout)
        self.bilstm = nn.LSTM(inputs.dim, bilstm_dim, batch_first=True, bidirectional=True)
        self.output = _OutputElmo(output_mix, elmo_dropout)
        self.scores = nn.Linear(2 * bilstm_dim + (elmo_dim if output_mix is not None else 0), n_tags)
        self.crf = LinearChainCRF(n_tags) if crf else None

    def forward(self, ids: torch.Tensor, layers: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        h = _bilstm(self.dropout(self.inputs(ids, layers, mask)), mask, self.bilstm)
        return self.scores(self.dropout(self.output(h, layers, mask)))

    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The summed loss over the batch's sentences (CRF) or tokens (per-token cross-entropy)."""
        if self.crf is not None:
            return self.crf.nll(emissions, tags, mask).sum()
        return nn.functional.cross_entropy(emissions[mask], tags[mask], reduction="sum")

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        if self.crf is not None:
            return self.crf.decode(emissions, mask)
        best = emissions.argmax(-1).cpu()
        return [best[b, : int(n)].tolist() for b, n in enumerate(mask.sum(1).cpu())]
