"""The processes of a fine-tuning run, seen from the training code: one process, or an Accelerate
process group started by torchrun, `accelerate launch` or srun.

    group = Group(build_data_parallel("auto"))   # or Group() for one process
    mine = group.share(len(docs))                # this process's contiguous share
    totals = group.sum(totals)                   # summed over processes
    group.sum_gradients(params)                  # one all-reduce of one flat buffer

With one process every method is the identity, so the same code runs in both cases.
"""
from __future__ import annotations

import numpy as np
import torch


class Group:
    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world_size = accelerator.num_processes if accelerator else 1
        self.is_main = self.rank == 0

    @property
    def multi(self) -> bool:
        return self.world_size > 1

    def share(self, n: int) -> range:
        """This process's contiguous share of n items (shares differ by at most one)."""
        return range(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the processes (same shape and device as `t`)."""
        if not self.multi:
            return t
        return self.acc.reduce(t.to(self.acc.device), reduction="sum").to(t.device)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over the processes."""
        if not self.multi:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = self.sum(torch.cat([g.reshape(-1) for g in grads]))
        for g, piece in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(piece.view_as(g))

    def gather(self, arr: np.ndarray) -> list[np.ndarray]:
        """Every process's `arr`, in rank order."""
        if not self.multi:
            return [arr]
        from accelerate.utils import gather_object

        return gather_object([arr])

    def broadcast(self, obj):
        """The main process's `obj`, on every process."""
        if not self.multi:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def barrier(self) -> None:
        if self.multi:
            self.acc.wait_for_everyone()

    def close(self) -> None:
        """End the process group so that every process exits cleanly (see train.accel.shut_down)."""
        if self.acc is not None:
            from elmo_dist.train.accel import shut_down

            shut_down(self.acc)
