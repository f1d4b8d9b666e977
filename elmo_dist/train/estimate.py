"""`elmo-dist pretrain CONFIG [key=value ...] --estimate`: how long the run will take, measured on
the configured device before it starts. Nothing is written: no run directory, no file.

    elmo-dist pretrain configs/demo.yaml data.dir=runs/demo/prepared --estimate
    elmo-dist pretrain configs/small.yaml data.dir=data/prepared --estimate --processes 8,32 --json

It builds the run's own `Trainer` (the start-up `pretrain` pays: imports, Accelerator, corpus,
model), its run directory swapped for a temporary directory under $TMPDIR that is removed at the
end, and times with the trainer's own methods: WARMUP_STEPS calls of `train_step` discarded
(allocation, kernel choice, compilation: their extra cost counts as start-up), then `steps` timed;
one `evaluate` (the whole held-out evaluation the run does); one `save` (a real checkpoint, fsync
and checksums included). The time to train.max_steps is then

    start-up + steps x step time + evaluations x evaluation time + checkpoints x checkpoint time

with evaluations and checkpoints counted from the config as the training loop makes them: every
train.eval_every / checkpoint.every steps before the last, then one of each at the end. A run
directory that already holds checkpoints is read (never written) for its step: the estimate is for
the steps left, and a checkpoint `pretrain` would refuse to resume is refused here too.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from elmo_dist.config import PretrainConfig
from elmo_dist.errors import UserError
from elmo_dist.runtime.accel import shut_down
from elmo_dist.runtime.checkpoint import Checkpointer
from elmo_dist.runtime.logs import log
from elmo_dist.runtime.stop import StopRequest
from elmo_dist.train.resume import check_fits, check_run_dir
from elmo_dist.train.trainer import Trainer

WARMUP_STEPS = 3
# the measured data-parallel efficiency the output cites, where a source checkout has it (`make bench`)
DIST_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "dist.json"
ASSUMPTION = ("tokens/s = N x e x the one-process rate; a step takes the one-process step time / e (each process "
              "keeps data.batch_size rows, so max_steps covers N times the tokens); an evaluation 1/N of its time "
              "(its lanes are split); start-up and checkpoints as measured")


def estimate(cfg: PretrainConfig, stopper: StopRequest, steps: int = 20, processes: list[int] = (8,),
             efficiency: float = 0.9, started: float | None = None) -> dict:
    """Measure and extrapolate (see the module docstring); every duration in seconds.

    `stopper`: the command's StopRequest, polled after each step as in training (a stop signal ends
    the estimate with a UserError). `processes`: the process counts to scale to, with data-parallel
    `efficiency` e in (0, 1]. `started`: a time.perf_counter() reading of when the command began;
    None (the CLI) counts from the process's own start, as `pretrain` pays it. UserError for bad
    arguments, for several processes (launch it as one), and for whatever `pretrain` refuses.
    """
    if steps < 1:
        raise UserError(f"--estimate-steps is {steps}; time at least 1 step")
    if not processes or min(processes) < 1:
        raise UserError(f"--processes {processes}: each process count must be at least 1")
    if not 0 < efficiency <= 1:
        raise UserError(f"--efficiency is {efficiency}; a data-parallel efficiency is in (0, 1]")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--estimate measures one process: run it without torchrun, accelerate launch or srun; "
                        "--processes N scales the figures to N processes")
    check_run_dir(cfg)
    latest = Checkpointer(cfg.train.run_dir, cfg.checkpoint.keep_last).newest(log=log.warning)
    start = int(json.loads((latest / "trainer_state.json").read_text())["step"]) if latest else 0
    level = log.level
    log.setLevel(logging.WARNING)  # the scratch run's "saved checkpoint /tmp/..." would read as a real one
    try:
        m = measure(cfg, latest, stopper, steps, started)
    finally:
        log.setLevel(level)
    return plan(m, cfg, start, processes, efficiency, measured_efficiency())


def measure(cfg: PretrainConfig, latest: Path | None, stopper: StopRequest, steps: int, started: float | None) -> dict:
    """The measured figures: the scratch Trainer's start-up, step, evaluation and checkpoint times (s)."""
    scratch = copy.deepcopy(cfg)
    # the steps are timed through the training loop itself (its logging and stop polling included),
    # without its periodic evaluations and checkpoints: those are timed one of each, below
    scratch.train.eval_every, scratch.checkpoint.every, scratch.logging.progress = 0, 0, "lines"
    with tempfile.TemporaryDirectory(prefix="elmo-dist-estimate-") as tmp:
        scratch.train.run_dir = tmp
        trainer = Trainer(scratch)
        try:
            ready = _since(started)
            if latest is not None:
                check_fits(latest, cfg, trainer.corpus.vocab)
            sync = _sync_for(trainer.accelerator.device)
            warm, _ = _timed(lambda: _run_steps(trainer, WARMUP_STEPS, stopper), sync)
            step_s = _timed(lambda: _run_steps(trainer, WARMUP_STEPS + steps, stopper), sync)[0] / steps
            eval_s, held_out = _timed(trainer.evaluate, sync)
            checkpoint_s, _ = _timed(trainer.save, sync)
        finally:
            trainer.lock.release()
            t0 = time.perf_counter()
            trainer.metrics.close()
            shut_down(trainer.accelerator)
            finish = time.perf_counter() - t0
        acc = trainer.accelerator
        precision = "fp32" if scratch.dist.mixed_precision == "no" else scratch.dist.mixed_precision
        return {"device": str(acc.device), "precision": precision, "warmup_steps": WARMUP_STEPS,
                "timed_steps": steps, "ready_s": ready, "warmup_s": warm, "finish_s": finish, "step_s": step_s,
                "eval_s": eval_s, "checkpoint_s": checkpoint_s, "tokens_per_step": trainer.tokens_per_step,
                "train_tokens": len(trainer.corpus.stream("train")),
                "epoch_windows": trainer.batcher.steps_per_epoch, "eval_tokens": held_out["val_tokens"]}


def _run_steps(trainer: Trainer, stop: int, stopper: StopRequest) -> None:
    trainer.run_steps(stop, stopper)
    if trainer.stop_reason:
        raise UserError(f"--estimate stopped ({trainer.stop_reason}) before it had measured; nothing was written")


def _since(started: float | None) -> float:
    """Seconds since `started` (a perf_counter reading), or since this process started."""
    if started is not None:
        return time.perf_counter() - started
    age = process_age()
    if age is None:
        raise UserError("--estimate needs /proc (Linux) to time the process's start-up")
    return age


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat against /proc/uptime, in clock
    ticks of 10 ms); None where there is no /proc."""
    try:
        # the fields after the command name, which may itself hold spaces and parentheses; starttime is field 22
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _sync_for(device: torch.device):
    # CUDA runs asynchronously: a time taken before the queue drains would miss the work
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed(fn, sync) -> tuple[float, object]:
    """(seconds `fn()` took, what it returned)."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def between(start: int, stop: int, every: int) -> int:
    """How many multiples of `every` lie in (start, stop): the periodic evaluations or checkpoints a
    run from step `start` to `stop` makes before its last step (0 when `every` is 0: never)."""
    return max(0, (stop - 1) // every - start // every) if every > 0 else 0


def plan(m: dict, cfg: PretrainConfig, start: int, processes: list[int], efficiency: float,
         measured: dict | None) -> dict:
    """The estimate from the measured figures `m` (see `measure`), for the steps from `start` to
    train.max_steps, on one process and on each of `processes`. Every duration in seconds."""
    max_steps = cfg.train.max_steps
    todo = max(0, max_steps - start)
    evals = between(start, max_steps, cfg.train.eval_every) + 1 if todo else 0
    checkpoints = between(start, max_steps, cfg.checkpoint.every) + 1 if todo else 0
    # the first steps' extra cost (allocation, compilation) is paid once, like the start-up
    startup = m["ready_s"] + max(0.0, m["warmup_s"] - m["warmup_steps"] * m["step_s"]) + m["finish_s"]
    step_s, eval_s, ckpt_s = m["step_s"], m["eval_s"], m["checkpoint_s"]
    accum = cfg.dist.gradient_accumulation_steps
    epoch_steps = m["epoch_windows"] / accum  # the batcher counts windows; a step takes `accum` of them
    rows = [{"processes": n, "tokens_per_s": n * efficiency * m["tokens_per_step"] / step_s,
             "epoch_steps": _epoch_windows(m["train_tokens"], cfg.data.batch_size * n, cfg.data.unroll_steps) / accum,
             "step_s": step_s / efficiency, "eval_s": eval_s / n} for n in processes]
    for r in rows:
        r["epoch_s"] = r["epoch_steps"] * r["step_s"]
        r["total_s"] = startup + todo * r["step_s"] + evals * r["eval_s"] + checkpoints * ckpt_s
    return {**m, "startup_s": startup, "tokens_per_s": m["tokens_per_step"] / step_s,
            "epoch_steps": epoch_steps, "epoch_tokens": epoch_steps * m["tokens_per_step"],
            "epoch_s": epoch_steps * step_s, "start_step": start, "max_steps": max_steps, "steps": todo,
            "train_s": todo * step_s, "evals": evals, "eval_every": cfg.train.eval_every,
            "checkpoints": checkpoints, "checkpoint_every": cfg.checkpoint.every,
            "total_s": startup + todo * step_s + evals * eval_s + checkpoints * ckpt_s,
            "scaling": {"efficiency": efficiency, "assumption": ASSUMPTION, "measured": measured, "rows": rows}}


def _epoch_windows(tokens: int, lanes: int, unroll: int) -> int:
    """Windows per epoch as WindowBatcher lays them out (its random start offset, under one window, aside)."""
    return tokens // lanes // unroll


def measured_efficiency(path: Path = DIST_RESULTS) -> dict | None:
    """The data-parallel efficiency `python -m benchmarks.bench_dist` measured (1 vs 2 processes,
    the same rows per process: e = one-process step time / two-process step time), with its source
    and date; None where the file is not at hand (an installed package has no benchmarks/)."""
    try:
        r = json.loads(path.read_text())
        e = r["one_process"]["ms_per_step"] / r["two_processes"]["ms_per_step"]
        setting = f"2 processes over gloo on a {r['machine']['cores']}-core {r['machine']['cpu']}"
        return {"efficiency": e, "setting": setting, "source": "benchmarks/results/dist.json",
                "date": r["machine"]["date"]}
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def hms(seconds: float) -> str:
    """12345.6 -> '3:25:46' (rounded to the second)."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _s(seconds: float, digits: int = 1) -> str:
    return f"{seconds:,.{digits}f} s ({hms(seconds)})"


def describe(res: dict) -> list[str]:
    """The estimate as the lines `elmo-dist pretrain --estimate` prints."""
    r, sc = res, res["scaling"]
    ev = f"every {r['eval_every']} steps and at the end" if r["eval_every"] else "at the end; train.eval_every=0"
    ck = (f"every {r['checkpoint_every']} steps and at the end" if r["checkpoint_every"]
          else "at the end; checkpoint.every=0")
    lines = [
        f"estimate on {r['device']} ({r['precision']}), 1 process: {r['warmup_steps']} warm-up steps discarded, "
        f"{r['timed_steps']} timed; nothing written",
        f"  tokens/s        {r['tokens_per_s']:,.0f} ({r['step_s']:.4g} s a step of {r['tokens_per_step']:,} tokens)",
        f"  start-up        {r['startup_s']:.2f} s (process start to the first step, the first steps' extra cost, "
        "closing)",
        f"  evaluation      {r['eval_s']:.2f} s each x {r['evals']} ({ev}; {r['eval_tokens']:,} held-out tokens)",
        f"  checkpoint      {r['checkpoint_s']:.2f} s each x {r['checkpoints']} ({ck})",
        f"  one epoch       {r['epoch_tokens']:,.0f} tokens, {r['epoch_steps']:,.1f} steps: {_s(r['epoch_s'])} "
        "of steps",
    ]
    if r["start_step"]:
        lines.append(f"  resuming        the run directory's newest checkpoint is step {r['start_step']}")
    lines.append(f"  to max_steps    {r['steps']:,} steps: {r['startup_s']:.2f} + {r['steps']:,} x {r['step_s']:.4g} + "
                 f"{r['evals']} x {r['eval_s']:.2f} + {r['checkpoints']} x {r['checkpoint_s']:.2f} = "
                 f"{_s(r['total_s'])}")
    for row in sc["rows"]:
        lines.append(f"  {row['processes']} processes:{' ' * max(1, 5 - len(str(row['processes'])))}"
                     f"{row['tokens_per_s']:,.0f} tokens/s; one epoch {_s(row['epoch_s'])}; "
                     f"to max_steps {_s(row['total_s'])}")
    m = sc["measured"]
    seen = (f"measured: e = {m['efficiency']:.2f} for {m['setting']} ({m['source']}, {m['date']})" if m
            else "no measured e at hand (python -m benchmarks.bench_dist writes benchmarks/results/dist.json)")
    lines.append(f"N processes, assumed: {sc['assumption']}; e = {sc['efficiency']:.2f} (--efficiency; 0.9 suits DDP "
                 f"whose all-reduce overlaps the backward pass on NVLink or InfiniBand); {seen}")
    return lines
