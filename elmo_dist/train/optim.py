"""The optimizer and its learning-rate schedule, from the `optim` config section.

    optimizer = build_optimizer(cfg.optim, model.parameters())
    lr = lr_at(cfg.optim, step, cfg.train.max_steps)
"""
from __future__ import annotations

import math

import torch

from elmo_dist.config import OptimConfig


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    impl = {"auto": {"fused": True}, "fused": {"fused": True}, "foreach": {"foreach": True},
            "loop": {"foreach": False}}[cfg.implementation]
    if cfg.name == "adagrad":
        # ELMo's recipe: Adagrad, lr 0.2, initial accumulator 1.0
        return torch.optim.Adagrad(params, lr=cfg.lr, initial_accumulator_value=cfg.adagrad_init_acc,
                                   weight_decay=cfg.weight_decay, **impl)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                            **impl)


def lr_at(cfg: OptimConfig, step: int, max_steps: int) -> float:
    """Linear warmup, then constant, linear or cosine decay to min_lr_ratio x lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "none":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    scale = 1 - frac if cfg.decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * scale)
