"""The process-group keys that pretraining and fine-tuning both carry in their `dist` section.

When several processes train (torchrun, accelerate launch, srun), they first form a group and then
wait on each other in every collective. These keys choose the backend and bound both waits, so a
process that died or never started ends the run in one line instead of hanging it:

    dist:
      backend: auto
      connect_timeout_s: 300
      timeout_minutes: 30
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from elmo_dist.config import base


@dataclass
class ProcessGroupConfig:
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend: auto (nccl on CUDA, gloo on CPU), gloo or nccl."""
    timeout_minutes: int = 30
    """How long a collective may wait, once the processes have formed their group, before the run
    fails instead of hanging."""
    connect_timeout_s: int = 300
    """How long forming the process group may take (seconds): every process must have started and
    reached the others within this, or the start fails in one line naming the rendezvous address.
    Bounds the wait for a process that died or never started (under torchrun --max-restarts a
    lost worker once kept the others in gloo's connect for over 10 minutes)."""


def validate_process_group(dist: ProcessGroupConfig) -> None:
    """Raises ConfigError naming the `dist.*` key whose value is not allowed."""
    for key in ("timeout_minutes", "connect_timeout_s"):
        base.require(getattr(dist, key) > 0, f"dist.{key}", "must be positive")
