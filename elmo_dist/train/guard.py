"""The NaN/inf guard: a step whose loss or gradient is not finite never reaches the weights.

    guard = NonFiniteGuard(mode="skip", max_consecutive=5)
    verdict = guard.check(loss, grad_norm)   # Verdict.OK, SKIP or STOP

SKIP drops the step (no optimizer update; the caller also resets the LSTM state so the NaN can't
flow into the next windows) and counts it; STOP comes with mode=stop at the first bad step, or
after `max_consecutive` bad steps in a row in skip mode: a loss that keeps blowing up is a diverged
run, and going on would only burn compute. The check costs one host sync per step; mode "off" skips it.

With several processes only the gradient norm decides: it is computed from all-reduced gradients, so
every rank reaches the same verdict. `nan_unless_finite` makes that hold for any non-finite loss,
and under DeepSpeed (whose engine steps inside `backward`) it is what keeps such a step out.
"""
from __future__ import annotations

from enum import Enum

import torch


class Verdict(str, Enum):
    def __str__(self) -> str:
        return self.value

    OK = "ok"
    SKIP = "skip"  # drop this update, go on
    STOP = "stop"  # a diverged run: stop it


class NonFiniteGuard:
    def __init__(self, mode: str = "skip", max_consecutive: int = 5, check_loss: bool = True,
                 check_grad: bool = True):
        self.mode, self.max_consecutive = mode, max_consecutive
        self.check_loss, self.check_grad = check_loss, check_grad
        self.skipped = 0  # all bad steps so far (kept across resume through the state dict)
        self.streak = 0

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.streak = int(state["skipped"]), int(state["streak"])

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> Verdict:
        if self.mode == "off":
            return Verdict.OK
        parts = []
        if self.check_loss:
            parts.append(torch.isfinite(loss.detach().float()).all())
        if self.check_grad:
            parts.append(torch.isfinite(grad_norm.detach().float()).all())
        if not parts or bool(torch.stack(parts).all()):
            self.streak = 0
            return Verdict.OK
        self.skipped += 1
        self.streak += 1
        if self.mode == "stop" or self.streak >= self.max_consecutive:
            return Verdict.STOP
        return Verdict.SKIP


def nan_unless_finite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` itself where it is finite; otherwise a loss whose gradient is NaN everywhere.

    A non-finite loss can have finite gradients (an inf from a logsumexp that overflowed has a
    softmax for its gradient), which would reach the weights unseen wherever only the gradient is
    checked: under DeepSpeed, whose engine steps inside `backward` and drops a step only when the
    gradient norm is not finite, and on ranks whose own loss was fine. A NaN gradient is dropped by
    every one of those checks, on every rank once all-reduced. No host sync: the factor is a tensor.
    """
    finite = torch.isfinite(loss.detach())
    return loss * torch.where(finite, 1.0, float("nan")).to(loss.dtype)
