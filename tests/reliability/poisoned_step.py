"""Helper for test_nan_guard.py, run as its own process (alone or under torchrun): trains 4 steps
with the loss of step 3 made non-finite on the chosen ranks, and prints what the weights did.

    python poisoned_step.py DATA RUN_DIR KIND RANKS [overrides...]

KIND is `inf` (a non-finite loss whose gradient is finite: the case a gradient check alone misses)
or `nan`; RANKS is a comma list of the ranks whose loss is poisoned. Prints one JSON line (rank 0).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from elmo_dist.config import PretrainConfig, load  # noqa: E402
from elmo_dist.model.bilm import BiLM  # noqa: E402
from elmo_dist.runtime.accel import shut_down  # noqa: E402
from elmo_dist.train.trainer import Trainer  # noqa: E402

from conftest import REPO, TINY_OVERRIDES  # noqa: E402

BAD_STEP = 3


def main(data: str, run: str, kind: str, ranks: str, *overrides: str) -> None:
    cfg = load(PretrainConfig, REPO / "configs/debug.yaml", [
        f"data.dir={data}", f"train.run_dir={run}", *TINY_OVERRIDES, "train.eval_every=0", "checkpoint.every=0",
        "train.max_steps=10", "optim.name=adam", "optim.lr=0.01", *overrides])
    trainer = Trainer(cfg)
    poisoned = trainer.accelerator.process_index in {int(r) for r in ranks.split(",")}
    forward = BiLM.forward

    def poisoned_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if poisoned and trainer.step + 1 == BAD_STEP:
            nll = out["nll_fwd"] + float("inf") if kind == "inf" else out["nll_fwd"] * float("nan")
            out = {**out, "nll_fwd": nll}
        return out

    BiLM.forward = poisoned_forward
    weights, state_reset = {}, None
    for _ in range(4):
        trainer.train_step(trainer.next_batch())
        weights[trainer.step] = {k: v.detach().float().clone()
                                 for k, v in trainer.accelerator.get_state_dict(trainer.model).items()}
        if trainer.step == BAD_STEP:
            state_reset = trainer.state is None

    def same(a, b):
        return all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])

    if trainer.accelerator.is_main_process:
        print(json.dumps({"bad_step_changed_weights": not same(BAD_STEP - 1, BAD_STEP),
                          "next_step_changed_weights": not same(BAD_STEP, BAD_STEP + 1),
                          "state_reset": state_reset, "skipped": trainer.guard.skipped,
                          "all_finite": all(bool(torch.isfinite(v).all()) for v in weights[4].values())}))
    shut_down(trainer.accelerator)


if __name__ == "__main__":
    main(*sys.argv[1:])
