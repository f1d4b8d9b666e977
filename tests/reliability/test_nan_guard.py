"""The NaN/inf guard: bad steps are skipped and counted, a run that keeps diverging stops with the
step and an intact last checkpoint, and a real blow-up (a huge learning rate) ends in one clear line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from elmo_dist import runs
from elmo_dist.config import PretrainConfig, load
from elmo_dist.errors import TrainingDiverged
from elmo_dist.runtime.stop import stop_request
from elmo_dist.train.trainer import Trainer

from conftest import REPO, TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.slow(seconds=57)  # its serial seconds: conftest starts the slowest first


def make_trainer(run, data, *extra) -> Trainer:
    cfg = load(PretrainConfig, REPO / "configs/debug.yaml",
               [f"data.dir={data}", f"train.run_dir={run}", *TINY_OVERRIDES, "train.eval_every=0",
                "logging.log_every=4", *extra])
    return Trainer(cfg)


def poison(monkeypatch, bad_steps):
    """Make the gradients and loss of the given (1-based) steps NaN, as an overflow would."""
    original = Trainer._micro_step

    def micro_step(self, batch, denom):
        out = original(self, batch, denom)
        if self.step + 1 in bad_steps:
            for p in self.model.parameters():
                p.grad.fill_(float("nan"))
            out = {**out, "nll_fwd": out["nll_fwd"] * float("nan")}
        return out

    monkeypatch.setattr(Trainer, "_micro_step", micro_step)


def test_bad_steps_are_skipped_counted_and_leave_the_weights_alone(tmp_path, grammar_corpus, monkeypatch):
    poison(monkeypatch, {5, 6})
    trainer = make_trainer(tmp_path / "run", grammar_corpus, "train.max_steps=12", "checkpoint.every=0")
    snapshots = {}
    for _ in range(8):
        trainer.train_step(trainer.next_batch())
        snapshots[trainer.step] = [p.detach().clone() for p in trainer.model.parameters()]
    for step in (5, 6):  # no update on a bad step: the weights are those of step 4
        assert all(torch.equal(a, b) for a, b in zip(snapshots[step], snapshots[4]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[7], snapshots[6]))
    assert trainer.guard.skipped == 2 and trainer.guard.streak == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_skips_reach_tensorboard_and_survive_resume(tmp_path, grammar_corpus, monkeypatch):
    poison(monkeypatch, {3})
    run = tmp_path / "run"
    make_trainer(run, grammar_corpus, "train.max_steps=8", "checkpoint.every=4").train(stop_request([]))
    state = json.loads((run / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    assert state["guard"]["skipped"] == 1
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("train/nonfinite_skipped_steps")] == [(4, 1.0), (8, 1.0)]


def test_consecutive_bad_steps_stop_with_the_step_and_last_good_checkpoint(tmp_path, grammar_corpus, monkeypatch):
    poison(monkeypatch, set(range(8, 100)))
    run = tmp_path / "run"
    trainer = make_trainer(run, grammar_corpus, "train.max_steps=40", "checkpoint.every=5",
                           "train.max_nonfinite_steps=3")
    with pytest.raises(TrainingDiverged) as err:
        trainer.train(stop_request([]))
    msg = str(err.value)
    assert msg.startswith("step 10: 3 step(s) in a row with a non-finite loss or gradient")
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step-5'} (finite and evaluable" in msg
    assert (runs.find_latest(run) == run / "checkpoints" / "step-5"
            and runs.verify(run / "checkpoints" / "step-5") is None)
    assert not (run / "summary.json").exists()


def test_mode_stop_stops_at_the_first_bad_step(tmp_path, grammar_corpus, monkeypatch):
    poison(monkeypatch, {3})
    trainer = make_trainer(tmp_path / "run", grammar_corpus, "train.max_steps=10", "train.nonfinite=stop")
    with pytest.raises(TrainingDiverged, match="^step 3: 1 step"):
        trainer.train(stop_request([]))


def test_a_real_blow_up_ends_in_one_error_line(tmp_path, grammar_corpus):
    proc = run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}",
                   f"train.run_dir={tmp_path / 'run'}", *TINY_OVERRIDES, "train.max_steps=50", "train.eval_every=0",
                   "checkpoint.every=1", "optim.name=adam", "optim.lr=1e30", "optim.grad_clip=0", check=False)
    assert proc.returncode == 2, proc.stderr
    err = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "non-finite loss or gradient" in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_no_checkpoint_is_written_or_rotated_during_a_streak(tmp_path, grammar_corpus, monkeypatch):
    """Issue 15, case 9: saving at steps 8 and 10 inside the streak called them good and, with
    keep_last=2, rotated away step-4 and step-6, the last ones written before it."""
    poison(monkeypatch, set(range(7, 100)))
    run = tmp_path / "run"
    trainer = make_trainer(run, grammar_corpus, "train.max_steps=40", "checkpoint.every=2", "checkpoint.keep_last=2",
                           "train.max_nonfinite_steps=6")
    with pytest.raises(TrainingDiverged) as err:
        trainer.train(stop_request([]))
    assert str(err.value).startswith("step 12: 6 step(s) in a row")
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step-6'}" in str(err.value)
    assert runs.list_steps(run / "checkpoints") == [4, 6]


def test_the_named_checkpoint_evaluates_and_the_advice_works(tmp_path, grammar_corpus):
    """Issue 15, case 2: with lr 1e30 the first updates are finite but absurd (weights of 8e28); the
    checkpoint the guard called good evaluated to nan and resuming from it diverged again."""
    run = tmp_path / "run"
    args = ["pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}", f"train.run_dir={run}",
            *TINY_OVERRIDES, "train.max_steps=30", "train.eval_every=0", "checkpoint.every=1", "optim.name=adam",
            "optim.grad_clip=0"]
    proc = run_cli(*args, "optim.lr=1e30", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("elmo-dist: error:")][0]
    assert "run the same command again" in line
    kept = runs.list_steps(run / "checkpoints")
    rejected = sorted(p.name for p in (run / "checkpoints").glob("rejected-step-*"))
    assert rejected, "the absurd checkpoints were set aside"
    for step in kept:  # whatever is still called a checkpoint evaluates to a finite perplexity
        run_cli("evaluate", str(run / "checkpoints" / f"step-{step}"), "--out", str(tmp_path / f"e{step}"))
        assert json.loads((tmp_path / f"e{step}" / "summary.json").read_text())["val_ppl"] < 1e6
    again = run_cli(*args, "optim.lr=0.01", check=False)  # the advice: a lower lr, the same command
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "summary.json").read_text())["finished"]


POISONED_STEP = [
    # (launch, ranks whose loss is poisoned, overrides): one process and two, plain and ZeRO 1/2/3, fp32 and bf16
    ("one", "0", ["dist.zero_stage=2", "dist.mixed_precision=bf16"]),
    ("one", "0", ["dist.zero_stage=3"]),
    ("torchrun", "1", ["dist.zero_stage=1"]),
    ("torchrun", "1", []),
]


@pytest.mark.parametrize("launch,ranks,overrides", POISONED_STEP,
                         ids=["zero2-bf16", "zero3-fp32", "zero1-2proc-rank1", "ddp-2proc-rank1"])
def test_a_non_finite_loss_never_reaches_the_weights_under_zero_or_on_one_rank(
        tmp_path, grammar_corpus, launch, ranks, overrides):
    """Issue 15, case 4: DeepSpeed steps inside `backward`, before the guard looks, and drops a step
    only for a non-finite gradient; an inf loss whose gradient is finite (here: loss + inf) was
    applied, under every stage, and so was one rank's inf loss with several processes. The carried
    LSTM state was not reset under ZeRO either."""
    script = [str(REPO / "tests/reliability/poisoned_step.py"), str(grammar_corpus), str(tmp_path / "run"), "inf",
              ranks, *overrides]
    launcher = [] if launch == "one" else ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                                           "127.0.0.1", "--master_port", "29549"]
    proc = subprocess.run([sys.executable, *launcher, *script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"bad_step_changed_weights": False, "next_step_changed_weights": True, "state_reset": True,
                      "skipped": 1, "all_finite": True}
