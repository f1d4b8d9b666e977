"""Learning-rate schedules: warmup, then constant, linear or cosine decay; pretraining's and fine-tuning's.

    lr = lr_at(cfg.optim, step, cfg.train.max_steps)                         # pretraining's `optim` section
    lr = scheduled_lr(3e-3, step, total_steps, warmup_steps=30, decay="cosine")
"""
from __future__ import annotations

import math

from elmo_dist.config import OptimConfig


def scheduled_lr(lr: float, step: int, total_steps: int, warmup_steps: int = 0, decay: str = "none",
                 min_lr_ratio: float = 0.0) -> float:
    """The learning rate of 0-based `step`: linear warmup over `warmup_steps`, then constant (decay none),
    linear or cosine decay from lr to min_lr_ratio x lr at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "none":
        return lr
    frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    scale = 1 - frac if decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * scale)


def lr_at(cfg: OptimConfig, step: int, max_steps: int) -> float:
    """Pretraining's learning rate at `step` of `max_steps` (the `optim` section's schedule)."""
    return scheduled_lr(cfg.lr, step, max_steps, cfg.warmup_steps, cfg.decay, cfg.min_lr_ratio)
