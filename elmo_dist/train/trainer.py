"""`elmo-dist pretrain CONFIG [key=value ...]`: the Accelerate training loop for the biLM.

    elmo-dist pretrain configs/debug.yaml data.dir=data/prepared train.run_dir=runs/debug

Running the same command again resumes from the newest complete checkpoint in `train.run_dir`:
the same step, the same data position, the same RNG and LSTM state, so the result is identical
to an uninterrupted run. The training loss is the summed NLL of both directions divided by
2 x rows x unroll_steps (a fixed denominator, so averaging over processes is exact); the logged
`train/loss_*` are per-target means. The sampled loss reads lower than the true perplexity.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from elmo_dist.config import PretrainConfig, require_byte_chars, save_config, to_yaml
from elmo_dist.data.batching import WindowBatcher
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.errors import DataError, TrainingDiverged
from elmo_dist.model import build_bilm
from elmo_dist.runs import resolve_device
from elmo_dist.runtime import checkpoint as ckpt
from elmo_dist.runtime.accel import broadcast, build_accelerator, ranks_in_sync, resolve_precision, shut_down
from elmo_dist.runtime.deepspeed_config import deepspeed_config
from elmo_dist.runtime.lock import RunDirLock, own_run_dir
from elmo_dist.runtime.logs import log, setup_logging
from elmo_dist.runtime.metrics import MetricsLogger, progress_bar
from elmo_dist.runtime.schedule import lr_at
from elmo_dist.runtime.stop import StopReason, StopRequest
from elmo_dist.train.evaluate import evaluate_bilm, perplexity, to_device, unigram_ppl
from elmo_dist.train.guard import NonFiniteGuard, Verdict, nan_unless_finite
from elmo_dist.train.optim import build_optimizer
from elmo_dist.train.resume import check_fits, check_layout, check_run_dir, finished_summary, set_aside_unusable
from elmo_dist.train.warm_start import warm_start


def _detach(state):
    return [[(h.detach(), c.detach()) for h, c in direction] for direction in state]


class Trainer:
    """The pretraining loop: `train()` runs (or resumes) the run; `train_step(batch)` is one optimizer step.

    Everything a step needs exists once `__init__` returns, resumed from the run's newest complete
    checkpoint if it has one, so `evaluate()` or `train_step()` may be called on their own.
    """

    def __init__(self, cfg: PretrainConfig, stop_at_step: int = 0):
        self.cfg, self.stop_at_step = cfg, stop_at_step
        dist = cfg.dist
        # resolved before the run's files are written, so the saved config says what actually ran
        dist.mixed_precision = resolve_precision(dist.mixed_precision, resolve_device(cfg.train.device))
        zero = (lambda world_size: deepspeed_config(cfg, world_size)) if dist.zero_stage else None
        self.accelerator = acc = build_accelerator(cfg.train.device, dist, dist.mixed_precision,
                                                   dist.gradient_accumulation_steps, deepspeed=zero)
        setup_logging(acc.is_main_process)
        self.run_dir = Path(cfg.train.run_dir)
        check_run_dir(cfg)
        self.lock = RunDirLock(self.run_dir)
        own_run_dir(self.lock, acc.is_main_process, self._broadcast)
        self.checkpointer = ckpt.Checkpointer(self.run_dir, cfg.checkpoint.keep_last, acc.is_main_process,
                                              self._broadcast, acc.wait_for_everyone)
        self.corpus = PreparedCorpus(cfg.data.dir, cfg.model.max_chars_per_token)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = build_bilm(cfg.model, len(self.corpus.vocab))
        if cfg.train.init_from and not self.checkpointer.steps():
            log.info(warm_start(self.model, cfg, self.corpus.vocab, cfg.train.init_from))
        if cfg.train.compile:
            self.model.compile()  # in place: parameter names (and so checkpoints) stay the same
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.uses_deepspeed = cfg.dist.zero_stage > 0
        try:
            self.batcher = WindowBatcher(self.corpus, cfg.data.batch_size, cfg.data.unroll_steps, cfg.train.seed,
                                         acc.process_index, acc.num_processes, stateful=cfg.data.stateful)
        except ValueError as e:
            raise DataError(str(e)) from None
        self.step, self.tokens, self.fp16_skipped = 0, 0, 0
        self.state = None  # the carried LSTM state (stateful batching), detached
        # under fp16 the loss scaler owns overflowing gradients (it skips those steps itself)
        self.guard = NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_nonfinite_steps,
                                    check_loss=acc.num_processes == 1,
                                    check_grad=cfg.dist.mixed_precision != "fp16")
        self.tokens_per_step = (cfg.data.batch_size * cfg.data.unroll_steps * cfg.dist.gradient_accumulation_steps
                                * acc.num_processes)
        # every rank built the same initial weights above; from here on dropout and sampling
        # differ per rank, as independent data-parallel workers should
        torch.manual_seed(cfg.train.seed + 1 + acc.process_index)
        self.last_train: dict = {}
        self.stop_reason: StopReason | None = None
        self.summary: dict = {}
        self._resume()
        self.metrics = MetricsLogger(self.run_dir, acc.is_main_process, cfg.logging.tensorboard,
                                     purge_step=self.step + 1 if self.step else None)
        self.unigram = unigram_ppl(self.corpus, cfg.data.max_eval_tokens)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The trainer's own position as plain JSON-able values (weights, optimizer, RNG and LSTM
        state are saved beside it, in their own files)."""
        return {"step": self.step, "tokens": self.tokens, "world_size": self.accelerator.num_processes,
                "zero_stage": self.cfg.dist.zero_stage, "fp16_skipped": self.fp16_skipped,
                "data": self.batcher.state_dict(), "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens, self.fp16_skipped = state["step"], state["tokens"], state["fp16_skipped"]
        self.batcher.load_state_dict(state["data"])
        self.guard.load_state_dict(state["guard"])

    def _bare_model(self) -> torch.nn.Module:
        """The model inside DDP's wrapper, when not under DeepSpeed. Not `accelerator.unwrap_model`:
        that imports DeepSpeed and FSDP to test for their wrappers, a cost every short run would pay."""
        model = self.model
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def save(self) -> Path:
        """Write the checkpoint of the current step (every rank takes part; see Checkpointer.save)."""
        needed = ckpt.tensor_bytes(self.model, self.optimizer, self.uses_deepspeed)
        final = self.checkpointer.save(self.step, self._write_checkpoint, needed)
        log.info("saved checkpoint %s", final)
        return final

    def _write_checkpoint(self, tmp: Path) -> None:
        acc, rank = self.accelerator, self.accelerator.process_index
        if self.uses_deepspeed:
            weights = acc.get_state_dict(self.model)  # every rank takes part: ZeRO-3 gathers the shards
            # ZeRO-partitioned weights and optimizer state, one file per rank
            acc.deepspeed_engine_wrapped.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")
        else:
            weights = self._bare_model().state_dict()
        if acc.is_main_process:
            optimizer = None if self.uses_deepspeed else self.optimizer.state_dict()
            ckpt.write_trainer_files(tmp, weights, self.state_dict(), self.cfg, optimizer)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        lstm = [] if self.state is None else [t for d in self.state for h, c in d for t in (h, c)]
        ckpt.write_rank_files(tmp, rank, rng, lstm)

    def _resume(self) -> None:
        for name in self.checkpointer.remove_partial():
            log.warning("removed %s, a checkpoint whose writing was interrupted", name)
        self.accelerator.wait_for_everyone()
        latest = self.checkpointer.newest(log=log.warning)
        if latest is not None:
            check_fits(latest, self.cfg, self.corpus.vocab)
            self.load(latest)

    def load(self, path: Path) -> None:
        """Resume from the checkpoint at `path`: weights, optimizer, trainer state, RNG and LSTM state."""
        acc, rank = self.accelerator, self.accelerator.process_index
        saved = self.checkpointer.load(path, rank)
        same_layout = check_layout(path, saved.state, self.cfg, acc.num_processes)
        if self.uses_deepspeed:
            acc.deepspeed_engine_wrapped.engine.load_checkpoint(str(path / "deepspeed"), tag="state")
        else:
            self._bare_model().load_state_dict(saved.weights())
            self.optimizer.load_state_dict(saved.optimizer())
        if saved.rng is not None:
            torch.set_rng_state(saved.rng["cpu"])
            if "cuda" in saved.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved.rng["cuda"])
        else:  # a rank the checkpoint didn't have
            torch.manual_seed(self.cfg.train.seed + 1 + rank + saved.state["step"])
        self.state = self._lstm_state(saved.lstm) if same_layout and saved.lstm else None
        self.load_state_dict(saved.state)
        log.info("resumed from %s at step %d", path, self.step)

    def _lstm_state(self, flat: list):
        dev = self.accelerator.device
        pairs = [(flat[i].to(dev), flat[i + 1].to(dev)) for i in range(0, len(flat), 2)]
        half = len(pairs) // 2
        return [pairs[:half], pairs[half:]]

    # -- the loop ------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, denom: int) -> dict:
        b = to_device(batch, self.accelerator.device)
        if b["reset"] or not self.cfg.data.stateful:
            self.state = None
        out = self.model(b, self.state)
        if self.cfg.data.stateful:
            self.state = _detach(out["state"])
        self.accelerator.backward(nan_unless_finite((out["nll_fwd"] + out["nll_bwd"]) / denom))
        return out

    def next_batch(self) -> list[dict]:
        """The next optimizer step's micro-batches from the batcher (`gradient_accumulation_steps` of them)."""
        return [self.batcher.next_batch() for _ in range(self.cfg.dist.gradient_accumulation_steps)]

    def train_step(self, batch: dict | list[dict]) -> dict:
        """One optimizer step on `batch`: one batch of `WindowBatcher`, or a list of
        `gradient_accumulation_steps` of them (the micro-batches, in order). Returns the step's summed
        NLL per direction, target count, gradient norm and learning rate (tensors stay on the device)."""
        cfg, acc = self.cfg, self.accelerator
        micro = batch if isinstance(batch, list) else [batch]
        accum = cfg.dist.gradient_accumulation_steps
        if len(micro) != accum:
            raise ValueError(f"train_step got {len(micro)} micro-batches; dist.gradient_accumulation_steps is {accum}")
        # set before the micro-batches: under DeepSpeed the optimizer steps inside the last backward
        lr = lr_at(cfg.optim, self.step, cfg.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # a fixed denominator (not the count of valid targets) keeps the average over processes
        # exactly equal to one big batch; Accelerate (or DeepSpeed) divides by `accum` itself
        denom = 2 * cfg.data.batch_size * cfg.data.unroll_steps
        nll_f, nll_b, count = 0.0, 0.0, 0
        for b in micro:
            # gradients are all-reduced (and DeepSpeed steps) only on the last micro-batch
            with acc.accumulate(self.model):
                out = self._micro_step(b, denom)
            nll_f, nll_b = nll_f + out["nll_fwd"].detach(), nll_b + out["nll_bwd"].detach()
            count = count + out["count_fwd"] + out["count_bwd"]
        grad_norm = self._clip()
        verdict = self.guard.check(nll_f + nll_b, grad_norm)
        if verdict is Verdict.OK:
            self.optimizer.step()  # under DeepSpeed a no-op: the engine stepped inside the last backward
        else:
            self.state = None  # a NaN in the carried LSTM state would poison every later window
        self.optimizer.zero_grad(set_to_none=True)
        self._count_fp16_skips()
        self.step += 1
        if verdict is not Verdict.OK:
            self._on_nonfinite(verdict)
        self.tokens += self.tokens_per_step
        return {"nll_fwd": nll_f, "nll_bwd": nll_b, "count": count, "grad_norm": grad_norm, "lr": lr}

    def _on_nonfinite(self, verdict: Verdict) -> None:
        g = self.guard
        if verdict is Verdict.SKIP:
            log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d in all)",
                        self.step, g.streak, g.skipped)
            return
        main = self.accelerator.is_main_process
        good = set_aside_unusable(self.checkpointer, self.corpus, self.cfg) if main else None
        kept = (f"the last good checkpoint is {good} (finite and evaluable; later ones were set aside as "
                "rejected-step-N)" if good else "no checkpoint is finite and evaluable, so the run starts over")
        raise TrainingDiverged(f"step {self.step}: {g.streak} step(s) in a row with a non-finite loss or gradient "
                               f"(train.nonfinite={self.cfg.train.nonfinite}, train.max_nonfinite_steps="
                               f"{self.cfg.train.max_nonfinite_steps}); stopped, {kept}. Lower optim.lr or raise "
                               "optim.grad_clip and run the same command again")

    def _count_fp16_skips(self) -> None:
        """fp16 loss scaling skips a step when gradients overflow; count them, for TensorBoard."""
        if self.cfg.dist.mixed_precision != "fp16":
            return
        if self.uses_deepspeed:
            self.fp16_skipped = int(self.accelerator.deepspeed_engine_wrapped.engine.skipped_steps)
        elif self.optimizer.step_was_skipped:
            self.fp16_skipped += 1

    def _clip(self) -> torch.Tensor:
        """Global-norm clipping; the norm before clipping (DeepSpeed clips inside its own step)."""
        acc, clip = self.accelerator, self.cfg.optim.grad_clip
        if self.uses_deepspeed:
            norm = acc.deepspeed_engine_wrapped.engine.get_global_grad_norm()
            return torch.as_tensor(0.0 if norm is None else float(norm))
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip > 0:
            return acc.clip_grad_norm_(params, clip).detach()
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).detach()

    def _broadcast(self, obj):
        return broadcast(self.accelerator, obj)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t

    def evaluate(self) -> dict:
        acc = self.accelerator
        res = evaluate_bilm(self.model, self.corpus, self.cfg.data, acc.device, self._reduce,
                            acc.process_index, acc.num_processes)
        self.metrics.log({"val/ppl_fwd": res["val_ppl_fwd"], "val/ppl_bwd": res["val_ppl_bwd"],
                          "val/ppl": res["val_ppl"]}, self.step)
        log.info("step %d: held-out ppl fwd %.2f bwd %.2f mean %.2f (unigram %.2f)", self.step,
                 res["val_ppl_fwd"], res["val_ppl_bwd"], res["val_ppl"], self.unigram)
        return res

    def _log_window(self, acc_window: list[dict], seconds: float, bar) -> None:
        stacked = torch.stack([torch.stack([m["nll_fwd"], m["nll_bwd"], m["count"].float()]) for m in acc_window])
        tot = self._reduce(stacked.sum(0).double()).tolist()  # one host sync per log interval
        half = max(tot[2], 1) / 2
        loss_f, loss_b = tot[0] / half, tot[1] / half
        n_tok = len(acc_window) * self.tokens_per_step
        metrics = {"train/loss_fwd": loss_f, "train/loss_bwd": loss_b, "train/ppl": perplexity(0.5 * (loss_f + loss_b)),
                   "train/lr": acc_window[-1]["lr"], "train/grad_norm": float(acc_window[-1]["grad_norm"]),
                   "perf/tokens_per_s": n_tok / max(seconds, 1e-9)}
        if self.cfg.dist.mixed_precision == "fp16":
            metrics["train/fp16_skipped_steps"] = self.fp16_skipped
        metrics["train/nonfinite_skipped_steps"] = self.guard.skipped
        self.metrics.log(metrics, self.step)
        self.last_train = metrics
        msg = (f"step {self.step}/{self.cfg.train.max_steps} loss fwd {loss_f:.3f} bwd {loss_b:.3f} "
               f"lr {metrics['train/lr']:.3g} |g| {metrics['train/grad_norm']:.2f} "
               f"{metrics['perf/tokens_per_s']:.0f} tok/s")
        if bar is not None:
            bar.set_postfix_str(msg.split(" ", 2)[2])
        else:
            log.info(msg)

    def _write_run_files(self) -> None:
        """The run directory describes itself for downstream use: config, vocabulary, tokenizer."""
        if not self.accelerator.is_main_process:
            return
        save_config(self.cfg, self.run_dir / "config.yaml")
        self.corpus.vocab.save(self.run_dir / "vocab.txt")
        opts = self.corpus.manifest["options"]
        corpus = {"tokenizer": opts["tokenizer"], "lowercase": opts["lowercase"], "data_dir": str(self.corpus.dir)}
        (self.run_dir / "corpus.json").write_text(json.dumps(corpus, indent=1))

    def train(self, stopper: StopRequest) -> dict:
        """Train from the current step to train.max_steps (or --stop-at-step, or a stop request);
        the run's summary (also written to RUN_DIR/summary.json). The run directory's lock is
        released at the end, however it ends. `stopper`: the command's stop signals and deadline
        (elmo_dist.runtime.stop), which the loop polls at every step boundary."""
        try:
            return self._train(stopper)
        finally:
            self.lock.release()

    def _train(self, stopper: StopRequest) -> dict:
        cfg, acc = self.cfg, self.accelerator
        if self.step >= cfg.train.max_steps:  # killed after its final checkpoint, before its summary
            return self._finish(self.evaluate(), self.checkpointer.newest(), self.step, None)
        self._write_run_files()
        self.metrics.text("config", to_yaml(cfg), self.step)
        stop = min(cfg.train.max_steps, self.stop_at_step or cfg.train.max_steps)
        log.info("training steps %d -> %d on %d process(es), %s; model %.2fM parameters", self.step, stop,
                 acc.num_processes, acc.device, sum(p.numel() for p in self.model.parameters()) / 1e6)
        start_step, t0 = self.step, time.perf_counter()
        # signals that arrive mid-step are recorded and acted on at the step boundary, saves included
        res = self.run_steps(stop, stopper)
        train_seconds = time.perf_counter() - t0
        if self.step >= cfg.train.max_steps:
            res = self.evaluate()
        path = self.save() if not self.guard.streak else self._no_save_in_streak()
        return self._finish(res, path, start_step, train_seconds)

    def _no_save_in_streak(self) -> Path | None:
        latest = self.checkpointer.newest()
        log.warning("step %d is inside a streak of %d non-finite steps: no checkpoint written; the newest is %s",
                    self.step, self.guard.streak, latest)
        return latest

    def run_steps(self, stop: int, stopper: StopRequest) -> dict | None:
        """Steps until `stop` or a stop request, with logging, evaluation and checkpoints on the way;
        the last evaluation's result. The training loop (`--estimate` times it too)."""
        cfg, res = self.cfg, None
        bar = progress_bar(cfg.logging.progress, self.accelerator.is_main_process, cfg.train.max_steps, self.step)
        window, t_window = [], time.perf_counter()
        while self.step < stop:
            window.append(self.train_step(self.next_batch()))
            if bar is not None:
                bar.update(1)
            self.stop_reason = stopper.poll(self.accelerator)
            if self.step % cfg.logging.log_every == 0 or self.step == stop or self.stop_reason:
                self._log_window(window, time.perf_counter() - t_window, bar)
                window, t_window = [], time.perf_counter()
            if self.stop_reason:
                log.warning("stopping at step %d (%s): saving a checkpoint to resume from", self.step, self.stop_reason)
                break
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.max_steps:
                res = self.evaluate()
            # never during a non-finite streak: such a checkpoint would be called good, and rotating
            # (checkpoint.keep_last) could remove the last one written before the streak
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < stop \
                    and not self.guard.streak:
                self.save()
        if bar is not None:
            bar.close()
        return res

    def _finish(self, res, path, start_step, seconds: float | None) -> dict:
        """Write and return the summary; `seconds` of training, None when no step ran."""
        acc = self.accelerator
        n = (self.step - start_step) * self.tokens_per_step
        speed = n / max(seconds, 1e-9) if seconds is not None else None
        self.summary = {**(res or {}), "unigram_ppl": self.unigram, "steps": self.step, "tokens": self.tokens,
                        "processes": acc.num_processes, "ranks_in_sync": ranks_in_sync(acc, self.model),
                        "tokens_per_s": speed, "train_ppl": self.last_train.get("train/ppl"),
                        "finished": self.step >= self.cfg.train.max_steps, "stopped": self.stop_reason,
                        "checkpoint": str(path), "run_dir": str(self.run_dir)}
        if acc.is_main_process:
            (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
        self.metrics.close()
        shut_down(acc)
        return self.summary


def pretrain(cfg: PretrainConfig, stopper: StopRequest, stop_at_step: int = 0) -> tuple[dict, bool]:
    """Train (or resume) a run: (its summary, whether this is the main process).

    summary["stopped"] is None when the run reached its step target, else why it stopped early
    (a checkpoint was written; running it again resumes): see elmo_dist.runtime.stop. A run that has
    already reached train.max_steps is not touched: its saved summary comes back, with
    "already_finished" set (a larger train.max_steps extends it instead).
    """
    require_byte_chars(cfg.model, "pretrain")  # the prepared corpus holds byte char ids only
    done = finished_summary(cfg)
    if done is not None:  # run again as it was: nothing to do, and nothing in the run directory changes
        return {**done, "already_finished": True}, int(os.environ.get("RANK", "0")) == 0
    trainer = Trainer(cfg, stop_at_step)
    summary = trainer.train(stopper)
    return summary, trainer.accelerator.is_main_process
