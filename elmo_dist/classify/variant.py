"""Train, early-stop and report one layer-combination variant, on one process or several.

    run = VariantRun("scalar_mix", cfg, embedder, sources, y, labels, out_dir, accelerator)
    summary = run.evaluate(run.fit())

Data parallelism through Accelerate, as in pretraining: the classifier (and a trainable biLM) is
prepared by the run's Accelerator (DDP with several processes) and stepped with
`accelerator.backward`. Every process draws the same global batches (one seeded permutation) and
takes its contiguous share of each; its summed loss is divided by the global batch's total weight
and multiplied by the number of processes, which DDP's gradient average divides out again: every
process takes the step one process would take on the whole global batch, whatever the number of
processes. Evaluation splits each split's documents the same way and gathers the predictions, so
early stopping sees the same figures everywhere. Only the main process writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from elmo_dist.classify import report
from elmo_dist.config import FinetuneConfig, save_config
from elmo_dist.embedder import Embedder
from elmo_dist.model.classifier import TextClassifier
from elmo_dist.model.scalar_mix import ScalarMix, build_mix
from elmo_dist.runtime.accel import gather, share
from elmo_dist.runtime.checkpoint import Checkpointer, write_weights
from elmo_dist.runtime.logs import log
from elmo_dist.runtime.metrics import MetricsLogger
from elmo_dist.runtime.schedule import scheduled_lr


def mix_weights(clf: TextClassifier) -> tuple[list[float] | None, float | None]:
    """The scalar mix's normalised layer weights and gamma, for reports (None for other variants)."""
    if isinstance(clf.mix, ScalarMix):
        return [round(w, 4) for w in clf.mix.normalized_weights().tolist()], round(float(clf.mix.gamma.detach()), 4)
    return None, None


def class_weights(y_train: np.ndarray, n_classes: int, how: str) -> np.ndarray:
    """Per-class loss weights: ones, or scikit-learn's 'balanced' n_samples / (n_classes * count)."""
    if how == "none":
        return np.ones(n_classes)
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y_train)
    w = np.ones(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=y_train)
    return w


class Tuned(torch.nn.Module):
    """What fine-tuning trains, as one module for Accelerate to prepare: the classifier and, when it is
    trainable, the biLM that `source` (LiveLayers) computes the layers with."""

    def __init__(self, clf: TextClassifier, bilm: torch.nn.Module | None):
        super().__init__()
        self.clf, self.bilm = clf, bilm

    def forward(self, source, idx: list[int], device) -> torch.Tensor:
        layers, mask = source.batch(idx, device)
        return self.clf(layers, mask)


class VariantRun:
    """One variant and one seed: the classifier, its optimizer, training and evaluation."""

    def __init__(self, variant: str, cfg: FinetuneConfig, embedder: Embedder, sources: dict, labels: dict,
                 label_names: list[str], out_dir: Path, accelerator, seed: int | None = None):
        self.variant, self.cfg, self.embedder = variant, cfg, embedder
        self.sources, self.y, self.label_names, self.out = sources, labels, label_names, out_dir
        self.acc = acc = accelerator
        self.seed = cfg.train.seed if seed is None else seed
        c = cfg.classifier
        torch.manual_seed(self.seed)  # the same initial classifier on every process
        mix = build_mix(variant, embedder.n_layers, embedder.dim, c.layer_norm, c.learned_fn_hidden)
        self.clf = TextClassifier(mix, embedder.dim, len(label_names), c.encoder, c.pooling, c.hidden_dim,
                                  c.dropout, c.bilstm_dim, c.token_dim).to(embedder.device)
        groups = [{"params": [p for p in self.clf.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
        if cfg.bilm.trainable:
            # the biLM's softmax takes no part in its layers: frozen, so that DDP expects no gradient for it
            embedder.model.softmax.requires_grad_(False)
            groups.append({"params": [p for p in embedder.model.parameters() if p.requires_grad], "lr": cfg.bilm.lr})
        optimizer = torch.optim.Adam(groups, weight_decay=cfg.optim.weight_decay)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        # the same module object stays inside DDP's wrapper: self.clf and embedder.model are what is saved
        self.model, self.optimizer = acc.prepare(Tuned(self.clf, embedder.model if cfg.bilm.trainable else None),
                                                 optimizer)
        self.step = 0
        bs = cfg.train.batch_size
        self.total_steps = cfg.train.epochs * ((len(labels["train"]) + bs - 1) // bs)
        self.generator = torch.Generator().manual_seed(self.seed)
        weights = class_weights(labels["train"], len(label_names), cfg.train.class_weights)
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=embedder.device)
        # dropout differs per process, as data-parallel workers' should
        torch.manual_seed(self.seed + 1 + acc.process_index)
        self.metrics = MetricsLogger(out_dir, acc.is_main_process, True)
        self.best_state: dict | None = None
        # the best epoch's weights, as a checkpoint: OUT/checkpoints/step-<epoch>/model.safetensors
        self.checkpointer = Checkpointer(out_dir, keep_last=1, is_main=acc.is_main_process)

    def _set_mode(self, training: bool) -> None:
        self.clf.train(training)
        self.embedder.model.train(training and self.cfg.bilm.trainable)

    def _set_lr(self) -> None:
        """The optim section's warmup and decay, one step further (the same on every process)."""
        o = self.cfg.optim
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = scheduled_lr(base, self.step, self.total_steps, o.warmup_steps, o.decay, o.min_lr_ratio)
        self.step += 1

    def _global_batches(self, n: int):
        order = torch.randperm(n, generator=self.generator).tolist()
        bs = self.cfg.train.batch_size
        for start in range(0, n, bs):
            yield order[start : start + bs]

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training documents; (weighted mean loss, accuracy) over all processes."""
        self._set_mode(True)
        acc, dev, y, source = self.acc, self.embedder.device, self.y["train"], self.sources["train"]
        totals = torch.zeros(3, dtype=torch.float64)  # weighted loss, correct, count
        for batch in self._global_batches(len(y)):
            mine = [batch[i] for i in share(acc, len(batch))]
            scale = float(self.class_weights[torch.as_tensor(y[batch])].sum())
            idx, live = (mine, 1.0) if mine else (batch[:1], 0.0)  # an empty share still takes part
            target = torch.as_tensor(y[idx], device=dev)
            logits = self.model(source, idx, dev)
            nll = F.cross_entropy(logits, target, weight=self.class_weights, reduction="sum")
            loss = live * nll / scale
            if isinstance(self.clf.mix, ScalarMix) and self.cfg.classifier.mix_l2 > 0:
                loss = loss + self.cfg.classifier.mix_l2 * self.clf.mix.weights.pow(2).sum() / acc.num_processes
            self.optimizer.zero_grad(set_to_none=False)
            acc.backward(loss * acc.num_processes)  # DDP averages the gradients: this makes it their sum
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self._set_lr()
            self.optimizer.step()
            totals += torch.tensor([live * float(nll.detach()), live * int((logits.argmax(-1) == target).sum()),
                                    live * len(idx)], dtype=torch.float64)
        loss_sum, correct, count = acc.reduce(totals.to(acc.device), reduction="sum").tolist()
        weight_sum = float(self.class_weights[torch.as_tensor(y)].sum())
        return loss_sum / weight_sum, correct / count

    @torch.no_grad()
    def predict(self, split: str) -> tuple[np.ndarray, float]:
        """Predicted class of every document of `split` (gathered from all processes) and the mean loss."""
        self._set_mode(False)
        y, bs, acc = self.y[split], self.cfg.train.batch_size, self.acc
        mine = share(acc, len(y))
        preds, total = [np.zeros(0, dtype=np.int64)], 0.0
        for start in range(mine.start, mine.stop, bs):
            idx = list(range(start, min(start + bs, mine.stop)))
            layers, mask = self.sources[split].batch(idx, self.embedder.device)
            logits = self.clf(layers, mask)
            total += float(F.cross_entropy(logits, torch.as_tensor(y[idx], device=logits.device), reduction="sum"))
            preds.append(logits.argmax(-1).cpu().numpy())
        pred = np.concatenate(gather(acc, np.concatenate(preds)))
        summed = acc.reduce(torch.tensor([total], dtype=torch.float64, device=acc.device), reduction="sum")
        return pred, float(summed[0]) / len(y)

    def _state(self) -> dict:
        state = {f"classifier.{k}": v for k, v in self.clf.state_dict().items()}
        if self.cfg.bilm.trainable:
            state.update({f"bilm.{k}": v for k, v in self.embedder.model.state_dict().items()})
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def _load(self, state: dict) -> None:
        self.clf.load_state_dict({k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")})
        bilm = {k[len("bilm."):]: v for k, v in state.items() if k.startswith("bilm.")}
        if bilm:
            self.embedder.model.load_state_dict(bilm)

    def _write_best(self, tmp: Path, epoch: int) -> None:
        write_weights(tmp, self.best_state)
        (tmp / "trainer_state.json").write_text(json.dumps({"epoch": epoch, "step": self.step, "seed": self.seed}))
        save_config(self.cfg, tmp / "config.yaml")

    def _score(self, pred: np.ndarray, loss: float) -> tuple[float, float]:
        """What early stopping maximises: the chosen validation metric, then the lower loss."""
        if self.cfg.train.early_stopping == "f1_macro":
            metric = report.compute_metrics(self.y["valid"], pred, self.label_names)["f1_macro"]
        else:
            metric = float((pred == self.y["valid"]).mean())
        return metric, -loss

    def fit(self) -> list[dict]:
        """Train until train.epochs or train.patience epochs without a better validation score;
        the best epoch's weights are kept (in memory on every process; on disk, by the main one, as the
        checkpoint OUT/checkpoints/step-<best epoch>)."""
        history, best, bad = [], (-1.0, -float("inf")), 0
        for epoch in range(1, self.cfg.train.epochs + 1):
            train_loss, train_acc = self.train_epoch()
            pred, valid_loss = self.predict("valid")
            valid_acc = float((pred == self.y["valid"]).mean())
            score = self._score(pred, valid_loss)
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                            "valid_loss": valid_loss, "valid_acc": valid_acc, "valid_score": score[0]})
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
        weights, gamma = mix_weights(self.clf)
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
        results = {}
        for split in ("train", "test"):
            pred, loss = self.predict(split)
            results[split] = report.compute_metrics(self.y[split], pred, self.label_names, loss)
        weights, gamma = mix_weights(self.clf)
        best_epoch = max(history, key=lambda h: (h["valid_score"], -h["valid_loss"]))["epoch"]
        summary = {"variant": self.variant, "seed": self.seed, "best_epoch": best_epoch, "epochs_run": len(history),
                   "early_stopping": self.cfg.train.early_stopping, "class_weights": self.cfg.train.class_weights,
                   "layer_weights": weights, "gamma": gamma, "train": results["train"], "test": results["test"]}
        if self.acc.is_main_process:
            (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
            (self.out / "report.txt").write_text(report.format_report(results, title=self.variant))
            report.plot_confusion(results["test"]["confusion_matrix"], self.label_names,
                                  self.out / "confusion_test.png", title=f"{self.variant}: test")
            report.plot_curves(history, self.out / "curves.png", title=self.variant)
        self.metrics.log({"test/accuracy": results["test"]["accuracy"], "test/f1_macro": results["test"]["f1_macro"]},
                         best_epoch)
        self.metrics.close()
        return summary
