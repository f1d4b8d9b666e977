"""Token encoders: ELMo's char CNN -> highway -> projection, or a plain word embedding.

Both map the *distinct* tokens of a batch to vectors; the biLM then gathers them into positions,
so a token that occurs 40 times in a batch is encoded once. The char CNN reads ELMo's UTF-8 byte
ids, or a char dictionary's (`model.char_vocab_size`, elmo_dist.data.char_dict), and may put a word
embedding beside its output (`model.char_cnn_word_dim`), as ELMoForManyLangs models do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elmo_dist.data import char_dict
from elmo_dist.data.char_ids import N_CHARS, PAD_CHAR


class Highway(nn.Module):
    """`g * relu(W_t x + b_t) + (1 - g) * x` with `g = sigmoid(W_c x + b_c)`, b_c starting at -2.

    The gate is what bilm-tf calls the carry; its -2 bias makes each layer start close to the
    identity, which is what lets deep highway stacks train.
    """

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.carry = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        self.transform = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        for lin in self.carry:
            nn.init.constant_(lin.bias, -2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for carry, transform in zip(self.carry, self.transform):
            g = torch.sigmoid(carry(x))
            x = g * F.relu(transform(x)) + (1 - g) * x
        return x


class CharCNN(nn.Module):
    """Char embedding, one convolution per width, max-pool over positions, ReLU, highway, projection.

    `n_chars` ids with padding id `pad_char` (ELMo's byte ids by default); `word_dim` > 0 adds a
    word embedding of `vocab_size` rows, concatenated as [word; highway output] before the projection.
    """

    def __init__(self, char_embed_dim: int, filters: list, n_highway: int, out_dim: int, max_chars: int,
                 n_chars: int = N_CHARS, pad_char: int = PAD_CHAR, vocab_size: int = 0, word_dim: int = 0):
        super().__init__()
        self.max_chars, self.pad_char = max_chars, pad_char
        self.char_embed = nn.Embedding(n_chars, char_embed_dim)
        nn.init.uniform_(self.char_embed.weight, -1.0, 1.0)
        self.convs = nn.ModuleList(nn.Conv1d(char_embed_dim, n, kernel_size=w) for w, n in filters)
        self.widest = max(w for w, _ in filters)
        n_filters = sum(n for _, n in filters)
        self.highway = Highway(n_filters, n_highway)
        # None adds no weight: a model without it has exactly ELMo's weights and names
        self.word_embed = nn.Embedding(vocab_size, word_dim) if word_dim else None
        self.proj = nn.Linear(word_dim + n_filters, out_dim)

    def forward(self, chars: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """chars: [U, C] ids, C <= max_chars; columns past C are taken to be padding. token_ids [U]:
        the tokens' vocabulary ids, read only with a word embedding. Returns [U, out_dim]."""
        chars = self._pad(chars.long())
        x = self.char_embed(chars).transpose(1, 2)  # [U, dim, chars]
        pooled = [conv(x).amax(dim=-1) for conv in self.convs]
        h = self.highway(F.relu(torch.cat(pooled, dim=-1)))
        if self.word_embed is not None:
            h = torch.cat([self.word_embed(token_ids), h], dim=-1)
        return self.proj(h)

    def _pad(self, chars: torch.Tensor) -> torch.Tensor:
        """Pad trimmed char ids just enough to give the exact max-pool of the full max_chars width.

        Past a token's end every window of a filter sees only padding and gives the same value, so
        the max over all max_chars positions equals the max over the first longest + widest
        positions, where longest = C - 1 is the longest token's length (the batcher keeps one
        padding column). On news text this halves the char CNN's work with the same result.
        """
        c = chars.shape[1]
        want = min(self.max_chars, c - 1 + self.widest)
        if c >= want:
            return chars
        return F.pad(chars, (0, want - c), value=self.pad_char)


class WordEncoder(nn.Module):
    """A word-embedding table (ids in the softmax vocabulary) and a projection to the LSTM width."""

    def __init__(self, vocab_size: int, embed_dim: int, out_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.proj = nn.Linear(embed_dim, out_dim)

    def forward(self, chars: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(token_ids))


def build_token_encoder(cfg, vocab_size: int) -> nn.Module:
    if cfg.encoder == "word":
        return WordEncoder(vocab_size, cfg.word_embed_dim, cfg.projection_dim)
    chars = dict(n_chars=cfg.char_vocab_size, pad_char=char_dict.PAD) if cfg.char_vocab_size else {}
    return CharCNN(cfg.char_embed_dim, cfg.filters, cfg.n_highway, cfg.projection_dim, cfg.max_chars_per_token,
                   vocab_size=vocab_size, word_dim=cfg.char_cnn_word_dim, **chars)
