"""The one place that builds the Accelerator (and, from the distributed issue on, DeepSpeed's config).

Everything else asks this module for the device and the process layout, so a single process,
torchrun and accelerate launch all go through the same code.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # tells DeepSpeed (imported by Accelerate) there is no GPU, instead of a warning on every start
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from accelerate import Accelerator  # noqa: E402

from elmo_dist.errors import ConfigError


def resolve_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is cuda, but no CUDA device is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def build_accelerator(cfg) -> Accelerator:
    device = resolve_device(cfg.train.device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    # the silent trap: a launcher that started N processes but an Accelerator that sees fewer
    # would train N independent copies with no gradient sync
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise ConfigError(
            f"WORLD_SIZE={expected} but the Accelerator sees {accelerator.num_processes} process(es); "
            "launch with torchrun or `accelerate launch --multi_gpu` so that the processes form one group")
    return accelerator
