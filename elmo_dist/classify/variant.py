"""Train, early-stop and report one layer-combination variant, on one process or several.

    run = VariantRun("scalar_mix", cfg, embedder, sources, y, labels, out_dir, group)
    summary = run.evaluate(run.fit())

Data parallelism without a wrapper: every process draws the same global batches (one seeded
permutation), takes its contiguous share of each, and scales its summed loss by the global batch's
total weight; the gradients are then summed across processes (one all-reduce of one flat buffer),
so every process takes exactly the step one process would take on the whole global batch, whatever
the number of processes. Evaluation splits each split's documents the same way and gathers the
predictions, so early stopping sees the same figures everywhere. Only the main process writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from elmo_dist.classify import report
from elmo_dist.classify.group import Group
from elmo_dist.config import FinetuneConfig
from elmo_dist.embedder import Embedder
from elmo_dist.model.classifier import TextClassifier
from elmo_dist.model.scalar_mix import ScalarMix, build_mix
from elmo_dist.train.metrics import MetricsLogger, log
from elmo_dist.train.optim import scheduled_lr


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


class VariantRun:
    """One variant and one seed: the classifier, its optimizer, training and evaluation."""

    def __init__(self, variant: str, cfg: FinetuneConfig, embedder: Embedder, sources: dict, labels: dict,
                 label_names: list[str], out_dir: Path, group: Group | None = None, seed: int | None = None):
        self.variant, self.cfg, self.embedder = variant, cfg, embedder
        self.sources, self.y, self.label_names, self.out = sources, labels, label_names, out_dir
        self.group = group or Group()
        self.seed = cfg.train.seed if seed is None else seed
        c = cfg.classifier
        torch.manual_seed(self.seed)  # the same initial classifier on every process
        mix = build_mix(variant, embedder.n_layers, embedder.dim, c.layer_norm, c.learned_fn_hidden)
        self.clf = TextClassifier(mix, embedder.dim, len(label_names), c.encoder, c.pooling, c.hidden_dim,
                                  c.dropout, c.bilstm_dim, c.token_dim).to(embedder.device)
        groups = [{"params": [p for p in self.clf.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
        if cfg.bilm.trainable:
            groups.append({"params": list(embedder.model.parameters()), "lr": cfg.bilm.lr})
        self.optimizer = torch.optim.Adam(groups, weight_decay=cfg.optim.weight_decay)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step = 0
        bs = cfg.train.batch_size
        self.total_steps = cfg.train.epochs * ((len(labels["train"]) + bs - 1) // bs)
        self.generator = torch.Generator().manual_seed(self.seed)
        weights = class_weights(labels["train"], len(label_names), cfg.train.class_weights)
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=embedder.device)
        # dropout differs per process, as data-parallel workers' should
        torch.manual_seed(self.seed + 1 + self.group.rank)
        self.metrics = MetricsLogger(out_dir, self.group.is_main, True)
        self.best_state: dict | None = None

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
        g, dev, y = self.group, self.embedder.device, self.y["train"]
        totals = torch.zeros(3, dtype=torch.float64)  # weighted loss, correct, count
        for batch in self._global_batches(len(y)):
            mine = [batch[i] for i in g.share(len(batch))]
            scale = float(self.class_weights[torch.as_tensor(y[batch])].sum())
            idx, live = (mine, 1.0) if mine else (batch[:1], 0.0)  # an empty share still takes part
            layers, mask = self.sources["train"].batch(idx, dev)
            target = torch.as_tensor(y[idx], device=dev)
            logits = self.clf(layers, mask)
            nll = F.cross_entropy(logits, target, weight=self.class_weights, reduction="sum")
            loss = live * nll / scale
            if isinstance(self.clf.mix, ScalarMix) and self.cfg.classifier.mix_l2 > 0:
                loss = loss + self.cfg.classifier.mix_l2 * self.clf.mix.weights.pow(2).sum() / g.world_size
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
            g.sum_gradients(self.params)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
            self._set_lr()
            self.optimizer.step()
            totals += torch.tensor([live * float(nll.detach()), live * int((logits.argmax(-1) == target).sum()),
                                    live * len(idx)], dtype=torch.float64)
        loss_sum, correct, count = g.sum(totals).tolist()
        weight_sum = float(self.class_weights[torch.as_tensor(y)].sum())
        return loss_sum / weight_sum, correct / count

    @torch.no_grad()
    def predict(self, split: str) -> tuple[np.ndarray, float]:
        """Predicted class of every document of `split` (gathered from all processes) and the mean loss."""
        self._set_mode(False)
        y, bs = self.y[split], self.cfg.train.batch_size
        mine = self.group.share(len(y))
        preds, total = [np.zeros(0, dtype=np.int64)], 0.0
        for start in range(mine.start, mine.stop, bs):
            idx = list(range(start, min(start + bs, mine.stop)))
            layers, mask = self.sources[split].batch(idx, self.embedder.device)
            logits = self.clf(layers, mask)
            total += float(F.cross_entropy(logits, torch.as_tensor(y[idx], device=logits.device), reduction="sum"))
            preds.append(logits.argmax(-1).cpu().numpy())
        pred = np.concatenate(self.group.gather(np.concatenate(preds)))
        return pred, float(self.group.sum(torch.tensor([total], dtype=torch.float64))[0]) / len(y)

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

    def _score(self, pred: np.ndarray, loss: float) -> tuple[float, float]:
        """What early stopping maximises: the chosen validation metric, then the lower loss."""
        if self.cfg.train.early_stopping == "f1_macro":
            metric = report.compute_metrics(self.y["valid"], pred, self.label_names)["f1_macro"]
        else:
            metric = float((pred == self.y["valid"]).mean())
        return metric, -loss

    def fit(self) -> list[dict]:
        """Train until train.epochs or train.patience epochs without a better validation score;
        the best epoch's weights are kept (in memory on every process, on disk by the main one)."""
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
                if self.group.is_main:
                    save_file(self.best_state, str(self.out / "best.safetensors"))
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
        if self.group.is_main:
            (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
            (self.out / "report.txt").write_text(report.format_report(results, title=self.variant))
            report.plot_confusion(results["test"]["confusion_matrix"], self.label_names,
                                  self.out / "confusion_test.png", title=f"{self.variant}: test")
            report.plot_curves(history, self.out / "curves.png", title=self.variant)
        self.metrics.log({"test/accuracy": results["test"]["accuracy"], "test/f1_macro": results["test"]["f1_macro"]},
                         best_epoch)
        self.metrics.close()
        return summary
