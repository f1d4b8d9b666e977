"""Train, early-stop and report one variant of a task model, on one process or several.

    run = VariantRun("scalar_mix", cfg, data, objective, embedder, sources, out_dir, accelerator, seed=0)
    summary = run.evaluate(run.fit())

The variant decides what the task model reads (elmo_dist.model.task): `no_elmo` its own word
embedding x_k alone; the others [x_k; ELMo_k] with the biLM's layers combined as the variant says
(frozen equal weights, a trained scalar mix, a learned function, the top layer).

Data parallelism through Accelerate, as in pretraining: the task model (and a trainable biLM) is
prepared by the run's Accelerator (DDP with several processes) and stepped with
`accelerator.backward`. Every process draws the same global batches (one seeded permutation) and
takes its contiguous share of each; its summed loss is divided by the global batch's total weight
(documents by class weight, or tokens) and multiplied by the number of processes, which DDP's
gradient average divides out again: every process takes the step one process would take on the
whole global batch, whatever the number of processes. Evaluation splits each split the same way
and gathers the predictions, so early stopping sees the same figures everywhere. Only the main
process writes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from elmo_dist.classify.inputs import batch_inputs
from elmo_dist.classify.objectives import write_metrics
from elmo_dist.config import FinetuneConfig, save_config
from elmo_dist.model.scalar_mix import ScalarMix, build_mix
from elmo_dist.model.task import Classifier, Tagger, TokenInputs
from elmo_dist.runtime.accel import gather, share
from elmo_dist.runtime.checkpoint import Checkpointer, write_weights
from elmo_dist.runtime.logs import log
from elmo_dist.runtime.metrics import MetricsLogger
from elmo_dist.runtime.schedule import scheduled_lr

BUCKET_BATCHES = 20  # batches sorted by length together (see VariantRun._global_batches)


def build_task_model(cfg: FinetuneConfig, variant: str, task: str, n_outputs: int, vocab_size: int,
                     n_layers: int, elmo_dim: int, vectors: torch.Tensor | None = None) -> torch.nn.Module:
    """The task model of `variant`: x_k (words.dim, from `vectors` if given) and, but for no_elmo,
    the biLM's layers mixed as the variant says (also at the output with classifier.elmo_at_output)."""
    c = cfg.classifier
    elmo = variant != "no_elmo"
    mix = build_mix(variant, n_layers, elmo_dim, c.layer_norm, c.learned_fn_hidden) if elmo else None
    out_mix = build_mix(variant, n_layers, elmo_dim, c.layer_norm, c.learned_fn_hidden) \
        if elmo and c.elmo_at_output else None
    inputs = TokenInputs(vocab_size, cfg.words.dim, mix, elmo_dim, c.elmo_dropout, vectors, cfg.words.trainable)
    if task == "tagging":
        return Tagger(inputs, n_outputs, c.bilstm_dim, c.dropout, c.crf, out_mix, elmo_dim, c.elmo_dropout)
    return Classifier(inputs, n_outputs, c.encoder, c.pooling, c.hidden_dim, c.dropout, c.bilstm_dim, c.token_dim,
                      out_mix, elmo_dim, c.elmo_dropout)


def mix_weights(model) -> tuple[list[float] | None, float | None]:
    """The input scalar mix's normalised layer weights and gamma, for reports (None for other variants)."""
    if isinstance(model.mix, ScalarMix):
        return [round(w, 4) for w in model.mix.normalized_weights().tolist()], round(float(model.mix.gamma.detach()), 4)
    return None, None


class Tuned(torch.nn.Module):
    """What fine-tuning trains, as one module for Accelerate to prepare: the task model and, when it is
    trainable, the biLM that the layer source (LiveLayers) computes with."""

    def __init__(self, model: torch.nn.Module, bilm: torch.nn.Module | None):
        super().__init__()
        self.model, self.bilm = model, bilm
        self.means = reads_means(model)  # fixed by the model's structure: asked once, not every batch

    def forward(self, data, sources, split: str, idx: list[int], device):
        ids, layers, mask = batch_inputs(data, sources, split, idx, device, self.means)
        return self.model(ids, layers, mask), mask


def reads_means(model: torch.nn.Module) -> bool:
    """Whether `model` takes each document's layer means for the same result (Classifier.reads_layer_means):
    then batches carry [B, L+1, D] means instead of [B, L+1, T, D] layers."""
    return bool(getattr(model, "reads_layer_means", False))


class VariantRun:
    """One variant and one seed: the task model, its optimizer, training and evaluation."""

    def __init__(self, variant: str, cfg: FinetuneConfig, data, objective, embedder, sources: dict | None,
                 out_dir: Path, accelerator, seed: int | None = None, vectors: torch.Tensor | None = None):
        self.variant, self.cfg, self.data, self.objective, self.embedder = variant, cfg, data, objective, embedder
        self.sources = sources if variant != "no_elmo" else None  # no_elmo reads no biLM layer at all
        self.out, self.acc = out_dir, accelerator
        self.seed = cfg.train.seed if seed is None else seed
        torch.manual_seed(self.seed)  # the same initial task model on every process
        self.net = build_task_model(cfg, variant, data.task, len(data.names), len(data.vocab), embedder.n_layers,
                                    embedder.dim, vectors).to(embedder.device)
        self.mix = self.net.mix
        self.means = reads_means(self.net)
        if self.means and self.sources is not None:
            log.info("%s reads each document's layer means: mean pooling of a linear mix, nothing per token "
                     "in between (the same model as reading every token's layers)", variant)
        trainable = cfg.bilm.trainable and self.sources is not None
        groups = [{"params": [p for p in self.net.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
        if trainable:
            # the biLM's softmax takes no part in its layers: frozen, so that DDP expects no gradient for it
            embedder.model.softmax.requires_grad_(False)
            groups.append({"params": [p for p in embedder.model.parameters() if p.requires_grad], "lr": cfg.bilm.lr})
        # fused: one kernel per step instead of a dozen passes over every parameter; the word embedding
        # x_k makes the parameters large enough for that to be most of a small task model's step
        optimizer = torch.optim.Adam(groups, weight_decay=cfg.optim.weight_decay,
                                     fused=embedder.device.type in ("cpu", "cuda"))
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.bilm_trains = trainable
        # the same module objects stay inside DDP's wrapper: self.net and embedder.model are what is saved
        self.model, self.optimizer = accelerator.prepare(Tuned(self.net, embedder.model if trainable else None),
                                                         optimizer)
        self.step, bs = 0, cfg.train.batch_size
        self.total_steps = cfg.train.epochs * ((len(data.ids["train"]) + bs - 1) // bs)
        self.generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed + 1 + accelerator.process_index)  # dropout differs per process
        self.metrics = MetricsLogger(out_dir, accelerator.is_main_process, True)
        self.best_state: dict | None = None
        # the best epoch's weights, as a checkpoint: OUT/checkpoints/step-<epoch>/model.safetensors
        self.checkpointer = Checkpointer(out_dir, keep_last=1, is_main=accelerator.is_main_process)

    def _set_mode(self, training: bool) -> None:
        self.net.train(training)
        self.embedder.model.train(training and self.bilm_trains)

    def _set_lr(self) -> None:
        """The optim section's warmup and decay, one step further (the same on every process)."""
        o = self.cfg.optim
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = scheduled_lr(base, self.step, self.total_steps, o.warmup_steps, o.decay, o.min_lr_ratio)
        self.step += 1

    def _global_batches(self, n: int):
        """A seeded shuffle cut into batches of similar lengths: each run of BUCKET_BATCHES batches of
        the shuffled units is sorted by length before it is cut, and the batches are shuffled again,
        so a batch pads little (documents range from tens to thousands of tokens) and its units are
        still random. Every process draws the same batches."""
        order = torch.randperm(n, generator=self.generator).tolist()
        ids, bs = self.data.ids["train"], self.cfg.train.batch_size
        batches = []
        for start in range(0, n, bs * BUCKET_BATCHES):
            bucket = sorted(order[start : start + bs * BUCKET_BATCHES], key=lambda i: len(ids[i]))
            batches.extend(bucket[k : k + bs] for k in range(0, len(bucket), bs))
        for j in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[j]

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training units; (weighted mean loss, accuracy) over all processes."""
        self._set_mode(True)
        acc, dev, obj = self.acc, self.embedder.device, self.objective
        totals = torch.zeros(3, dtype=torch.float64)  # summed loss, correct, count
        for batch in self._global_batches(len(self.data.ids["train"])):
            mine = [batch[i] for i in share(acc, len(batch))]
            scale = obj.batch_weight("train", batch)
            idx, live = (mine, 1.0) if mine else (batch[:1], 0.0)  # an empty share still takes part
            out, mask = self.model(self.data, self.sources, "train", idx, dev)
            summed, correct, count = obj.loss(self.net, out, mask, "train", idx)
            loss = live * summed / scale
            if isinstance(self.mix, ScalarMix) and self.cfg.classifier.mix_l2 > 0:
                loss = loss + self.cfg.classifier.mix_l2 * self.mix.weights.pow(2).sum() / acc.num_processes
            self.optimizer.zero_grad(set_to_none=False)
            acc.backward(loss * acc.num_processes)  # DDP averages the gradients: this makes it their sum
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self._set_lr()
            self.optimizer.step()
            totals += torch.tensor([live * float(summed.detach()), live * correct, live * count], dtype=torch.float64)
        loss_sum, correct, count = acc.reduce(totals.to(acc.device), reduction="sum").tolist()
        return loss_sum / obj.split_weight("train"), correct / max(count, 1)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[list, float]:
        """Every unit's prediction in `split` (gathered from all processes) and the mean loss per unit
        (classification) or token (tagging)."""
        self._set_mode(False)
        acc, bs, n = self.acc, self.cfg.train.batch_size, len(self.data.ids[split])
        mine, totals = share(acc, n), torch.zeros(2, dtype=torch.float64)
        ids_of = self.data.ids[split]
        by_length = sorted(mine, key=lambda i: len(ids_of[i]))  # batches of similar lengths pad little
        preds: list = [None] * len(mine)
        for start in range(0, len(by_length), bs):
            idx = by_length[start : start + bs]
            ids, layers, mask = batch_inputs(self.data, self.sources, split, idx, self.embedder.device, self.means)
            out = self.net(ids, layers, mask)
            loss, count = self.objective.eval_loss(self.net, out, mask, split, idx)
            totals += torch.tensor([loss, count], dtype=torch.float64)
            for i, p in zip(idx, self.objective.predict(self.net, out, mask)):
                preds[i - mine.start] = p
        loss, count = acc.reduce(totals.to(acc.device), reduction="sum").tolist()
        return [p for part in gather(acc, preds) for p in part], loss / max(count, 1)

    def _state(self) -> dict:
        state = {f"classifier.{k}": v for k, v in self.net.state_dict().items()}
        if self.bilm_trains:
            state.update({f"bilm.{k}": v for k, v in self.embedder.model.state_dict().items()})
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def _load(self, state: dict) -> None:
        self.net.load_state_dict({k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")})
        bilm = {k[len("bilm."):]: v for k, v in state.items() if k.startswith("bilm.")}
        if bilm:
            self.embedder.model.load_state_dict(bilm)

    def _write_best(self, tmp: Path, epoch: int) -> None:
        write_weights(tmp, self.best_state)
        (tmp / "trainer_state.json").write_text(f'{{"epoch": {epoch}, "step": {self.step}, "seed": {self.seed}}}')
        save_config(self.cfg, tmp / "config.yaml")

    def fit(self) -> list[dict]:
        """Train until train.epochs or train.patience epochs without a better validation score;
        the best epoch's weights are kept (in memory on every process; on disk, by the main one, as the
        checkpoint OUT/checkpoints/step-<best epoch>)."""
        history, best, bad = [], (-1.0, -float("inf")), 0
        for epoch in range(1, self.cfg.train.epochs + 1):
            train_loss, train_acc = self.train_epoch()
            pred, valid_loss = self.predict("valid")
            m = self.objective.metrics("valid", pred, valid_loss)
            score = (self.objective.score(m), -valid_loss)  # the chosen metric, then the lower loss
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                            "valid_loss": valid_loss, "valid_acc": m["accuracy"], "valid_score": score[0]})
            self._log_epoch(history[-1])
            if score > best:
                best, bad, self.best_state = score, 0, self._state()
                if self.acc.is_main_process:  # the others hold the same weights
                    self.checkpointer.save(epoch, lambda tmp, e=epoch: self._write_best(tmp, e),
                                           sum(4 * v.numel() for v in self.best_state.values()))
            else:
                bad += 1
                if bad >= self.cfg.train.patience:
                    log.info("%s: no better validation %s for %d epochs, stopping", self.variant,
                             self.cfg.train.early_stopping, bad)
                    break
        self._load(self.best_state)
        return history

    def _log_epoch(self, h: dict) -> None:
        weights, gamma = mix_weights(self.net)
        scalars = {"train/loss": h["train_loss"], "train/accuracy": h["train_acc"], "valid/loss": h["valid_loss"],
                   "valid/accuracy": h["valid_acc"], f"valid/{self.cfg.train.early_stopping}": h["valid_score"],
                   "train/lr": self.optimizer.param_groups[0]["lr"]}
        if weights is not None:
            scalars.update({f"mix/weight_{k}": w for k, w in enumerate(weights)}, **{"mix/gamma": gamma})
        self.metrics.log(scalars, h["epoch"])
        log.info("%s seed %d epoch %d: train loss %.4f acc %.4f | valid loss %.4f acc %.4f", self.variant, self.seed,
                 h["epoch"], h["train_loss"], h["train_acc"], h["valid_loss"], h["valid_acc"])

    def evaluate(self, history: list[dict]) -> dict:
        """Train and test metrics of the best epoch; the reports and plots (main process)."""
        from elmo_dist.classify import report

        results, test_preds = {}, None
        for split in ("train", "test"):
            pred, loss = self.predict(split)
            results[split] = self.objective.metrics(split, pred, loss)
            test_preds = pred if split == "test" else test_preds
        weights, gamma = mix_weights(self.net)
        best_epoch = max(history, key=lambda h: (h["valid_score"], -h["valid_loss"]))["epoch"]
        summary = {"variant": self.variant, "seed": self.seed, "best_epoch": best_epoch, "epochs_run": len(history),
                   "early_stopping": self.cfg.train.early_stopping, "layer_weights": weights, "gamma": gamma,
                   "train": results["train"], "test": results["test"]}
        if self.acc.is_main_process:
            write_metrics(self.out, summary)
            self.objective.write(self.out, results, self.variant)
            if hasattr(self.objective, "write_predictions"):
                self.objective.write_predictions(self.out, "test", test_preds)
            report.plot_curves(history, self.out / "curves.png", title=self.variant)
        self.metrics.log({"test/accuracy": results["test"]["accuracy"]}, best_epoch)
        self.metrics.close()
        return summary
