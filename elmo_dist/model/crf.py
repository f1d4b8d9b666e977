"""A linear-chain conditional random field over per-token tag scores (the optional top of a tagger).

Usage::

    crf = LinearChainCRF(n_tags)
    emissions = tagger(tokens)                   # [B, T, K] unnormalised per-token tag scores
    loss = crf.nll(emissions, tags, mask).mean()  # tags [B, T] long, mask [B, T] bool
    paths = crf.decode(emissions, mask)           # list of B tag lists, each of its sequence's length

The score of tags y_1..y_L is start[y_1] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t]
+ end[y_L]; p(y | x) = exp(score) / Z, with log Z from the forward algorithm in log space and the
best path from Viterbi, both vectorised over the batch with a Python loop over the T time steps.

Why our own: no maintained library fits. pytorch-crf last released 0.7.2 on 2019-02-04 (and under
torch 2.13 warns that its uint8 masks in torch.where are deprecated); torch-struct's only release,
0.5, is from 2021-02-14. Both checked on PyPI.

Mask: True at real tokens, left-aligned (position 0 always real, no gaps); padded positions change
nothing, and tags there may hold any value (e.g. -100): they are never used as indices.
Parameters start uniform in (-0.1, 0.1), small so that the emissions decide at first. Float32 and
float64 both work; parameters and emissions are combined under PyTorch's type promotion.
"""
from __future__ import annotations

import torch
from torch import nn


class LinearChainCRF(nn.Module):
    def __init__(self, n_tags: int):
        super().__init__()
        self.n_tags = n_tags
        self.transitions = nn.Parameter(torch.empty(n_tags, n_tags).uniform_(-0.1, 0.1))  # [from, to]
        self.start = nn.Parameter(torch.empty(n_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(n_tags).uniform_(-0.1, 0.1))

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same as `nll` (so that `torch.func.functional_call` and hooks see it)."""
        return self.nll(emissions, tags, mask)

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> None:
        if emissions.dim() != 3 or emissions.shape[2] != self.n_tags:
            raise ValueError(f"emissions must be [B, T, {self.n_tags}], got {list(emissions.shape)}")
        if mask.shape != emissions.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool {list(emissions.shape[:2])}, got {mask.dtype} {list(mask.shape)}")
        # The recursions below keep a finished sequence's state by skipping masked steps, and the gold
        # path's last tag is read at length - 1: both need every sequence to be a prefix of positions.
        # (One host sync per call; cheap next to the T-step loop.)
        if emissions.shape[1] == 0 or not bool(mask[:, 0].all()) or bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("mask must be left-aligned: True at position 0 and no True after a False")

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-log p(tags | emissions) per sequence, [B]."""
        self._check(emissions, mask)
        if tags.shape != mask.shape:
            raise ValueError(f"tags must be {list(mask.shape)}, got {list(tags.shape)}")
        tags = tags.masked_fill(~mask, 0)  # padding may hold -100: make it a valid index, then mask it out
        zero = emissions.new_zeros(())

        # Score of the gold path: start + emissions + transitions between real neighbours + end.
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # [B, T]
        gold = self.start[tags[:, 0]] + torch.where(mask, emit, zero).sum(1)
        trans = self.transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
        gold = gold + torch.where(mask[:, 1:], trans, zero).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
        gold = gold + self.end[last]

        # Forward algorithm: alpha[b, j] = log sum over paths ending in tag j at step t.
        alpha = self.start + emissions[:, 0]  # [B, K]
        for t in range(1, emissions.shape[1]):
            # [B, from, 1] + [from, to] + [B, 1, to], summed (in log space) over `from`
            step = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)  # finished sequences keep their alpha
        log_z = torch.logsumexp(alpha + self.end, dim=1)
        return log_z - gold

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the highest-scoring tag sequence of each sequence, of its own length."""
        self._check(emissions, mask)
        batch, steps, _ = emissions.shape
        score = self.start + emissions[:, 0]  # [B, K]: best score of a path ending in each tag
        backpointers = []  # [B, K] per step t >= 1: the best previous tag for each current tag
        for t in range(1, steps):
            best, prev = (score.unsqueeze(2) + self.transitions).max(dim=1)
            backpointers.append(prev)
            score = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], score)
        cur = (score + self.end).argmax(dim=1)  # [B]: each sequence's best last tag

        # Walk back from T-1; past a sequence's end (mask False) its last tag is carried unchanged,
        # so that at position length-1 it holds the best last tag and backtracking starts there.
        path = torch.empty(batch, steps, dtype=torch.long, device=emissions.device)
        path[:, steps - 1] = cur
        for t in range(steps - 1, 0, -1):
            prev = backpointers[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
            cur = torch.where(mask[:, t], prev, cur)
            path[:, t - 1] = cur
        lengths = mask.sum(1).tolist()
        return [row[:n] for row, n in zip(path.tolist(), lengths)]
