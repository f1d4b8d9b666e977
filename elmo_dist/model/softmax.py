"""The softmax both directions share: full, sampled (log-uniform negatives) or adaptive.

Training may use the sampled or adaptive loss; evaluation always calls `full_nll`, the exact
negative log-likelihood under the whole vocabulary.

Sampled softmax: `n_samples` negatives are drawn once per step, with replacement, from the
log-uniform (Zipf) distribution q(k) = log((k+2)/(k+1)) / log(V+1) over the frequency-sorted
vocabulary, and shared by every position (as bilm-tf does). Each negative's logit is corrected by
-log(n_samples * q(k)) and a negative equal to the target is dropped, so that
exp(true logit) + sum over negatives of exp(corrected logit) is an unbiased estimate of the
partition function. With n_samples >= V the "sample" is the whole vocabulary once, the
correction is zero, and the loss equals the full softmax exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def log_uniform_log_q(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    ids = ids.double()
    return (torch.log((ids + 2) / (ids + 1)) / math.log(vocab_size + 1)).log().float()


class SharedSoftmax(nn.Module):
    def __init__(self, kind: str, vocab_size: int, dim: int, n_samples: int = 8192, cutoffs: list | None = None):
        super().__init__()
        self.kind, self.vocab_size, self.n_samples = kind, vocab_size, n_samples
        if kind == "adaptive":
            cuts = [c for c in (cutoffs or []) if 0 < c < vocab_size - 1]
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(dim, vocab_size, cuts or [vocab_size // 2], div_value=4.0)
        else:
            self.weight = nn.Parameter(torch.randn(vocab_size, dim) / math.sqrt(dim))
            self.bias = nn.Parameter(torch.zeros(vocab_size))

    def sample(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative ids and their log expected counts, log(n_samples * q)."""
        v, s = self.vocab_size, self.n_samples
        if s >= v:
            ids = torch.arange(v, device=device)
            return ids, torch.zeros(v, device=device)
        u = torch.rand(s, device=device, dtype=torch.float64)
        ids = (torch.exp(u * math.log(v + 1)) - 1).long().clamp_(0, v - 1)
        return ids, math.log(s) + log_uniform_log_q(ids, v)

    def train_nll(self, h: torch.Tensor, targets: torch.Tensor, negatives=None) -> torch.Tensor:
        """Per-position training loss for hidden states h [N, D] and targets [N]."""
        if self.kind == "adaptive":
            return -self.adaptive(h, targets).output
        if self.kind == "full":
            return self.full_nll(h, targets)
        ids, log_count = negatives
        true_logit = (h * self.weight[targets]).sum(-1) + self.bias[targets]
        neg_logit = h @ self.weight[ids].t() + self.bias[ids] - log_count
        neg_logit = neg_logit.masked_fill(ids[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([true_logit[:, None], neg_logit], dim=1)
        return torch.logsumexp(logits.float(), dim=1) - true_logit.float()

    def full_nll(self, h: torch.Tensor, targets: torch.Tensor, max_elements: int = 2**22,
                 vocab_block: int = 16384) -> torch.Tensor:
        """Exact per-position NLL [N] over the whole vocabulary for hidden states h [N, D].

        Memory is bounded whatever the vocabulary: logits are formed a block of at most `vocab_block`
        words by `max_elements // vocab_block` rows at a time (16 MiB of float32 by default) and
        folded into a running logsumexp, so a 793k-word vocabulary needs no more than a 20k one.
        Blocks this small also stay in the allocator's heap instead of being mapped and faulted in
        afresh each time, which made the one-chunk version twice as slow on the CPU.
        """
        if self.kind == "adaptive":
            return -self.adaptive.log_prob(h).gather(1, targets[:, None]).squeeze(1)
        v = self.vocab_size
        vb = min(v, vocab_block)
        rows = max(1, max_elements // vb)
        out = []
        for i in range(0, h.shape[0], rows):
            hi, ti = h[i : i + rows], targets[i : i + rows]
            lse, true = None, None
            for j in range(0, v, vb):
                logits = F.linear(hi, self.weight[j : j + vb], self.bias[j : j + vb]).float()
                block = torch.logsumexp(logits, dim=1)
                lse = block if lse is None else torch.logaddexp(lse, block)
                # the target's logit from the same product, so that precision matches the normaliser
                inside = (ti >= j) & (ti < j + vb)
                picked = logits.gather(1, (ti - j).clamp(0, logits.shape[1] - 1)[:, None]).squeeze(1)
                true = picked if true is None else torch.where(inside, picked, true)
            out.append(lse - true)
        return torch.cat(out) if out else h.new_zeros(0)
