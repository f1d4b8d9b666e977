"""Pretraining's optimizer, from the `optim` config section (its schedule: elmo_dist.runtime.schedule).

    optimizer = build_optimizer(cfg.optim, model.parameters())
"""
from __future__ import annotations

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
