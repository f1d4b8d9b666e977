"""Pack a token stream into [rows, unroll_steps] windows, the way bilm-tf feeds its biLM.

Each epoch orders the shards by a seeded permutation, starts the stream at a seeded offset below
`unroll_steps` (so window edges move between epochs) and cuts it into `rows x world_size` equal,
contiguous lanes. Row r of rank k reads lane k*rows + r, one window after the other, so:
- every row of every window is full (the remainder of the stream is dropped, < one window per lane);
- ranks read disjoint windows, and an epoch covers the stream once across all ranks;
- row r of step t+1 continues row r of step t, which lets the LSTM carry its state (stateful);
- the position is just (epoch, step): resuming is exact and costs nothing.

Targets: forward = the next token, backward = the previous token, within a sentence. Where there
is none (the input is `</S>` going forward, `<S>` going backward, or the stream ends) the target is
IGNORE. With a stateful LSTM the backward direction reads each lane right to left, so it gets its
own windows (`bwd_*`), taken from the lane's end backwards; otherwise both directions share one.
Every batch carries the char ids of its distinct tokens only (`chars`, `token_ids`) and, per
position, an index into them (`fwd_index`, `bwd_index`): the char CNN runs once per distinct token.
"""
from __future__ import annotations

import math

import numpy as np

from elmo_dist.data.char_ids import PAD_CHAR
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.data.vocab import BOS_ID, EOS_ID

IGNORE = -100


def _window(stream, starts: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Global ids of stream positions start-1 .. start+steps (one token of context each side)."""
    rows, n = len(starts), len(stream)
    gids = np.zeros((rows, steps + 2), dtype=np.int64)
    exists = np.zeros((rows, steps + 2), dtype=bool)
    for r, s in enumerate(starts.tolist()):
        lo, hi = max(s - 1, 0), min(s + steps + 1, n)
        if hi > lo:
            gids[r, lo - (s - 1) : hi - (s - 1)] = stream.read(lo, hi)
            exists[r, lo - (s - 1) : hi - (s - 1)] = True
    return gids, exists


def make_batch(corpus: PreparedCorpus, stream, fwd_starts: np.ndarray, bwd_starts: np.ndarray,
               lane_lo: np.ndarray, lane_hi: np.ndarray, steps: int) -> dict:
    """One batch: a forward window per row at `fwd_starts`, a backward one at `bwd_starts`.

    Inputs outside [lane_lo, lane_hi) are padding with no target. Padding only ever sits after the
    real tokens in the direction the LSTM reads (right of a forward window, left of a backward
    one), so it never leaks into their states. Targets may lie across a lane edge, so that every
    token is predicted exactly once in each direction.
    """
    same = bwd_starts is fwd_starts
    fg, fe = _window(stream, fwd_starts, steps)
    bg, be = (fg, fe) if same else _window(stream, bwd_starts, steps)
    cols = np.arange(steps)[None, :]
    f_in, b_in = fg[:, 1:-1], bg[:, 1:-1]
    f_lane = (fwd_starts[:, None] + cols >= lane_lo[:, None]) & (fwd_starts[:, None] + cols < lane_hi[:, None])
    b_lane = (bwd_starts[:, None] + cols >= lane_lo[:, None]) & (bwd_starts[:, None] + cols < lane_hi[:, None])
    fwd = np.where(fe[:, 2:] & f_lane & (f_in != EOS_ID), corpus.softmax_ids(fg[:, 2:]), IGNORE)
    bwd = np.where(be[:, :-2] & b_lane & (b_in != BOS_ID), corpus.softmax_ids(bg[:, :-2]), IGNORE)
    uniq, inverse = np.unique(np.concatenate([f_in, b_in]) if not same else f_in, return_inverse=True)
    inverse = inverse.reshape(-1, steps)
    return {
        "token_ids": corpus.softmax_ids(uniq),
        "chars": trim_chars(corpus.char_ids(uniq)),
        "fwd_index": inverse[: len(f_in)],
        "bwd_index": inverse[len(f_in) :] if not same else inverse,
        "fwd_targets": fwd,
        "bwd_targets": bwd,
    }


def trim_chars(chars: np.ndarray, pad: int = PAD_CHAR) -> np.ndarray:
    """Drop the all-padding char columns but one; the char CNN restores what its filters need.
    `pad`: the padding id (a char dictionary's, elmo_dist.data.char_dict, is another)."""
    longest = int((chars != pad).sum(axis=1).max()) if len(chars) else 0
    return np.ascontiguousarray(chars[:, : min(chars.shape[1], longest + 1)])


class WindowBatcher:
    """Deterministic, resumable, rank-aware training windows; see the module docstring."""

    def __init__(self, corpus: PreparedCorpus, rows: int, unroll_steps: int, seed: int,
                 rank: int = 0, world_size: int = 1, split: str = "train", stateful: bool = True):
        self.corpus, self.rows, self.steps, self.stateful = corpus, rows, unroll_steps, stateful
        self.seed, self.rank, self.world_size, self.split = seed, rank, world_size, split
        self.epoch, self.step = 0, 0
        self._layout_epoch = -1
        n_lanes = rows * world_size
        if len(corpus.stream(split)) - unroll_steps < n_lanes * (unroll_steps + 1):
            raise ValueError(
                f"{corpus.dir}: the {split} split ({len(corpus.stream(split))} tokens) is too small for "
                f"{n_lanes} rows of {unroll_steps}-token windows; lower data.batch_size or data.unroll_steps")

    def _layout(self) -> None:
        if self._layout_epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        n_shards = len(self.corpus.shards[self.split])
        self.stream = self.corpus.stream(self.split, rng.permutation(n_shards).tolist())
        offset = int(rng.integers(self.steps))
        n_lanes = self.rows * self.world_size
        self.lane_len = (len(self.stream) - offset) // n_lanes
        self.steps_per_epoch = self.lane_len // self.steps
        mine = np.arange(self.rank * self.rows, (self.rank + 1) * self.rows)
        self.lane_starts = offset + mine * self.lane_len
        self._layout_epoch = self.epoch

    def next_batch(self) -> dict:
        """The next window for this rank; `reset` is True at the start of an epoch (new lanes)."""
        self._layout()
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
            self._layout()
        lo, hi = self.lane_starts, self.lane_starts + self.steps_per_epoch * self.steps
        fwd = lo + self.step * self.steps
        # stateful: the backward LSTM reads its lane right to left, so its windows go backwards
        bwd = hi - (self.step + 1) * self.steps if self.stateful else fwd
        batch = make_batch(self.corpus, self.stream, fwd, bwd, lo, hi, self.steps)
        batch["reset"] = self.step == 0
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "rows": self.rows,
                "unroll_steps": self.steps, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume. A position saved under another layout (rows x processes, or window length
        `unroll_steps`) continues at the same token of each lane, or, with another number of lanes,
        at the same fraction of the epoch; rounded up to a whole window, so no text is read twice."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        old_lanes = int(state.get("rows", self.rows)) * int(state.get("world_size", self.world_size))
        old_steps = int(state.get("unroll_steps", self.steps))
        if old_lanes == self.rows * self.world_size and old_steps == self.steps:
            return
        self._layout()
        tokens = self.step * old_steps  # read of each lane this epoch
        if old_lanes != self.rows * self.world_size:
            tokens = tokens * self.lane_len / self._lane_len(old_lanes, old_steps)
        self.step = min(self.steps_per_epoch, math.ceil(tokens / self.steps))

    def _lane_len(self, n_lanes: int, unroll_steps: int) -> int:
        """The lane length of this epoch's layout under `n_lanes` lanes of `unroll_steps` windows."""
        rng = np.random.default_rng([self.seed, self.epoch])
        rng.permutation(len(self.corpus.shards[self.split]))  # the same draws as _layout, in order
        offset = int(rng.integers(unroll_steps))
        return (len(self.corpus.stream(self.split)) - offset) // n_lanes


def eval_batches(corpus: PreparedCorpus, rows: int, unroll_steps: int, max_tokens: int = 0,
                 split: str = "heldout", rank: int = 0, world_size: int = 1, context_tokens: int = 0):
    """Every held-out token once, in `rows` lanes padded to whole windows; rank r takes lanes r, r+W, ...

    The lanes don't depend on the number of processes, so the summed result is the same on any.
    With `context_tokens`, each lane first reads that much text (whole windows, at most one lane)
    without targets, to warm its LSTM state: going forward the text before the lane, going backward
    the text after it. Where there is no such text (the first lane forward, the last backward), the
    first scored batch says so in `fresh` = (fwd rows, bwd rows), whose state must start at zero.
    """
    stream = corpus.stream(split)
    n = eval_length(stream, max_tokens)
    lane_len = -(-n // rows)
    n_windows = -(-lane_len // unroll_steps)
    mine = np.arange(rank, rows, world_size)
    if len(mine) == 0:
        return
    lo, hi = np.minimum(mine * lane_len, n), np.minimum((mine + 1) * lane_len, n)
    warm = min(-(-context_tokens // unroll_steps), lane_len // unroll_steps)
    for w in range(warm):
        # a lane [lo, lo) has no targets: these windows only carry the state forward
        batch = make_batch(corpus, stream, lo - (warm - w) * unroll_steps, hi + (warm - 1 - w) * unroll_steps,
                           lo, lo, unroll_steps)
        batch["reset"] = w == 0
        yield batch
    for w in range(n_windows):
        fwd = lo + w * unroll_steps
        # backward windows always align to the lane's end, so their padding is read last
        bwd = hi - (w + 1) * unroll_steps
        batch = make_batch(corpus, stream, fwd, bwd, lo, hi, unroll_steps)
        batch["reset"] = w == 0 and not warm
        if w == 0 and warm:
            batch["fresh"] = (lo - warm * unroll_steps < 0, hi + warm * unroll_steps > n)
        yield batch


def eval_length(stream, max_tokens: int = 0) -> int:
    """Stream length to evaluate: all of it, or up to the last sentence end within max_tokens."""
    if not max_tokens or max_tokens >= len(stream):
        return len(stream)
    ends = np.flatnonzero(stream.read(0, max_tokens) == EOS_ID)
    if len(ends) == 0:
        raise ValueError(f"data.max_eval_tokens={max_tokens} holds no complete held-out sentence")
    return int(ends[-1]) + 1
