"""What a fine-tuning task learns and how it is scored: one label per document (classification) or
one tag per token (tagging). The training loop (elmo_dist.classify.variant) is the same for both.

    objective = build_objective(cfg, data, device)
    weight = objective.batch_weight(global_batch)          # what a global batch's loss is divided by
    loss = objective.loss(model, out, mask, my_share)      # summed over my share of it
    preds = objective.predict(model, out, mask)            # per unit: a class, or a list of tags
    metrics = objective.metrics("test", preds, mean_loss)  # plain Python types, for metrics.json

Classification weighs each document by its class weight (train.class_weights); tagging weighs each
token equally, so that a global batch of sentences gives one process's step on the whole batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from elmo_dist.classify import report, tagging_report
from elmo_dist.classify.inputs import TaskData


def class_weights(y_train: np.ndarray, n_classes: int, how: str) -> np.ndarray:
    """Per-class loss weights: ones, or scikit-learn's 'balanced' n_samples / (n_classes * count)."""
    if how == "none":
        return np.ones(n_classes)
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y_train)
    w = np.ones(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=y_train)
    return w


class Classification:
    """Cross-entropy per document, weighted by class; metrics from scikit-learn (report.py)."""

    units = "documents"
    reported = (("accuracy", "accuracy"), ("f1_macro", "macro-F1"), ("f1_weighted", "weighted-F1"))

    def __init__(self, data: TaskData, class_weighting: str, early_stopping: str, device):
        self.data, self.early_stopping = data, early_stopping
        w = class_weights(data.targets["train"], len(data.names), class_weighting)
        self.weights = torch.tensor(w, dtype=torch.float32, device=device)

    def batch_weight(self, split: str, idx: list[int]) -> float:
        return float(self.weights[torch.as_tensor(self.data.targets[split][idx])].sum())

    def split_weight(self, split: str) -> float:
        return self.batch_weight(split, list(range(len(self.data.targets[split]))))

    def loss(self, model, out, mask, split: str, idx: list[int]) -> tuple[torch.Tensor, float, int]:
        """(summed weighted loss, correct predictions, units) of this share of a batch."""
        target = torch.as_tensor(self.data.targets[split][idx], device=out.device)
        loss = F.cross_entropy(out, target, weight=self.weights, reduction="sum")
        return loss, int((out.argmax(-1) == target).sum()), len(idx)

    def eval_loss(self, model, out, mask, split: str, idx: list[int]) -> tuple[float, int]:
        target = torch.as_tensor(self.data.targets[split][idx], device=out.device)
        return float(F.cross_entropy(out, target, reduction="sum")), len(idx)

    def predict(self, model, out, mask) -> list:
        return out.argmax(-1).cpu().tolist()

    def metrics(self, split: str, preds: list, loss: float) -> dict:
        return report.compute_metrics(self.data.targets[split], np.asarray(preds), self.data.names, loss)

    def score(self, m: dict) -> float:
        return m["f1_macro"] if self.early_stopping == "f1_macro" else m["accuracy"]

    def write(self, out: Path, results: dict, title: str) -> None:
        (out / "report.txt").write_text(report.format_report(results, title=title))
        report.plot_confusion(results["test"]["confusion_matrix"], self.data.names, out / "confusion_test.png",
                              title=f"{title}: test")


class Tagging:
    """Per-token cross-entropy (or a CRF's sentence NLL) averaged over tokens; entity-level F1 with
    seqeval for B-/I- tag sets, token accuracy for others (tagging_report.py)."""

    units = "sentences"

    def __init__(self, data: TaskData, scheme: str, early_stopping: str, device):
        self.data, self.early_stopping, self.device = data, early_stopping, device
        gold = [[data.names[t] for t in tags] for tags in data.targets["train"]]
        self.scheme = tagging_report.tag_scheme(gold) if scheme == "auto" else scheme
        entities = self.scheme in tagging_report.ENTITY_SCHEMES
        self.reported = ((("f1", "entity F1"), ("precision", "precision"), ("recall", "recall"),
                          ("accuracy", "token acc.")) if entities else
                         (("accuracy", "token acc."), ("f1_macro", "macro-F1"), ("f1_weighted", "weighted-F1")))

    def _tags(self, split: str, idx: list[int], width: int) -> torch.Tensor:
        tags = torch.full((len(idx), width), -100, dtype=torch.long)
        for b, i in enumerate(idx):
            t = self.data.targets[split][i]
            tags[b, : len(t)] = torch.from_numpy(t)
        return tags.to(self.device)

    def batch_weight(self, split: str, idx: list[int]) -> float:
        return float(sum(len(self.data.targets[split][i]) for i in idx))

    def split_weight(self, split: str) -> float:
        return self.batch_weight(split, list(range(len(self.data.targets[split]))))

    def loss(self, model, out, mask, split: str, idx: list[int]) -> tuple[torch.Tensor, float, int]:
        tags = self._tags(split, idx, out.shape[1])
        best = out.argmax(-1)
        return model.loss(out, tags, mask), int((best[mask] == tags[mask]).sum()), int(mask.sum())

    def eval_loss(self, model, out, mask, split: str, idx: list[int]) -> tuple[float, int]:
        return float(model.loss(out, self._tags(split, idx, out.shape[1]), mask)), int(mask.sum())

    def predict(self, model, out, mask) -> list:
        return model.decode(out, mask)

    def _names(self, seqs) -> list[list[str]]:
        return [[self.data.names[t] for t in s] for s in seqs]

    def metrics(self, split: str, preds: list, loss: float) -> dict:
        m = tagging_report.tagging_metrics(self._names(self.data.targets[split]), self._names(preds), self.scheme)
        return {**m, "accuracy": m["token_accuracy"], "loss": loss}

    def score(self, m: dict) -> float:
        return m["f1"] if self.early_stopping == "f1" else m["accuracy"]

    def write(self, out: Path, results: dict, title: str) -> None:
        test = results["test"]
        (out / "report.txt").write_text(tagging_report.format_tagging_report(test, title=f"{title}: test"))
        if self.scheme == "none":  # part of speech: which tags are taken for which
            tagging_report.plot_tag_confusion(test["confusion_matrix"], test["labels"], out / "confusion_test.png",
                                              title=f"{title}: test")

    def write_predictions(self, out: Path, split: str, preds: list) -> None:
        tagging_report.write_conll_predictions(out / f"predictions_{split}.conll", self.data.tokens[split],
                                               self._names(self.data.targets[split]), self._names(preds))


def build_objective(cfg, data: TaskData, device):
    if data.task == "tagging":
        return Tagging(data, cfg.classifier.tag_scheme, cfg.train.early_stopping, device)
    return Classification(data, cfg.train.class_weights, cfg.train.early_stopping, device)


def write_metrics(out: Path, summary: dict) -> None:
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
