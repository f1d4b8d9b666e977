"""`elmo-dist finetune CONFIG [key=value ...]`: text classifiers on a pretrained biLM's layers.

    elmo-dist finetune configs/finetune.yaml bilm.path=runs/demo/pretrain data.train=news.csv \
        "variants=[frozen,scalar_mix,learned_fn,top]"

Each of `variants` trains in RUN_DIR/<variant>/ (with `variants: []`, the one `classifier.variant`
trains in RUN_DIR itself) (best checkpoint, metrics.json, report.txt, confusion
matrix and training-curve PNGs, TensorBoard events), then a comparison table with a TF-IDF +
logistic-regression baseline on the same split is printed and written to RUN_DIR/summary.json.
With a frozen biLM (the default) every document's layers are computed once and shared by all
epochs and variants; with `bilm.trainable=true` they are recomputed with gradients every batch.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from elmo_dist import configlib
from elmo_dist.classify import report
from elmo_dist.classify.cache import open_or_build, weights_digest
from elmo_dist.classify.data import Splits, build_splits, label_index
from elmo_dist.config import FinetuneConfig
from elmo_dist.embedder import Embedder
from elmo_dist.model.classifier import TextClassifier
from elmo_dist.model.scalar_mix import ScalarMix, build_mix
from elmo_dist.train.metrics import MetricsLogger, log, setup_logging


class LiveLayers:
    """[B, L+1, T, D] layers and masks computed by the biLM for each batch (a trainable biLM, or
    `bilm.cache=false`); `LayerCache` serves the same batches from disk."""

    def __init__(self, embedder: Embedder, docs: list[list[str]], trainable: bool = False):
        self.embedder, self.docs, self.trainable = embedder, docs, trainable

    def __len__(self) -> int:
        return len(self.docs)

    def batch(self, idx: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.embedder.layers([self.docs[i] for i in idx])


def _mix_weights(clf: TextClassifier) -> tuple[list[float] | None, float | None]:
    if isinstance(clf.mix, ScalarMix):
        return [round(w, 4) for w in clf.mix.normalized_weights().tolist()], round(float(clf.mix.gamma.detach()), 4)
    return None, None


class VariantRun:
    """Train, early-stop and report one layer-combination variant."""

    def __init__(self, variant: str, cfg: FinetuneConfig, embedder: Embedder, sources: dict, labels: np.ndarray,
                 label_names: list[str], out_dir: Path):
        self.variant, self.cfg, self.embedder = variant, cfg, embedder
        self.sources, self.y, self.label_names, self.out = sources, labels, label_names, out_dir
        c = cfg.classifier
        torch.manual_seed(cfg.train.seed)
        mix = build_mix(variant, embedder.n_layers, embedder.dim, c.layer_norm, c.learned_fn_hidden)
        self.clf = TextClassifier(mix, embedder.dim, len(label_names), c.encoder, c.pooling, c.hidden_dim,
                                  c.dropout, c.bilstm_dim, c.token_dim).to(embedder.device)
        groups = [{"params": [p for p in self.clf.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
        if cfg.bilm.trainable:
            groups.append({"params": list(embedder.model.parameters()), "lr": cfg.bilm.lr})
        self.optimizer = torch.optim.Adam(groups, weight_decay=cfg.optim.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.metrics = MetricsLogger(out_dir, True, True)

    def _set_mode(self, training: bool) -> None:
        self.clf.train(training)
        self.embedder.model.train(training and self.cfg.bilm.trainable)

    def _batches(self, split: str, shuffle: bool):
        n = len(self.y[split])
        order = torch.randperm(n, generator=self.generator).tolist() if shuffle else list(range(n))
        bs = self.cfg.train.batch_size
        for start in range(0, n, bs):
            yield order[start : start + bs]

    def train_epoch(self) -> tuple[float, float]:
        self._set_mode(True)
        total, correct, count = 0.0, 0, 0
        dev = self.embedder.device
        for idx in self._batches("train", shuffle=True):
            layers, mask = self.sources["train"].batch(idx, dev)
            target = torch.as_tensor(self.y["train"][idx], device=dev)
            logits = self.clf(layers, mask)
            loss = F.cross_entropy(logits, target)
            if isinstance(self.clf.mix, ScalarMix) and self.cfg.classifier.mix_l2 > 0:
                loss = loss + self.cfg.classifier.mix_l2 * self.clf.mix.weights.pow(2).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
            self.optimizer.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == target).sum())
            count += len(idx)
        return total / count, correct / count

    @torch.no_grad()
    def predict(self, split: str) -> tuple[np.ndarray, float]:
        self._set_mode(False)
        preds, total = [], 0.0
        for idx in self._batches(split, shuffle=False):
            layers, mask = self.sources[split].batch(idx, self.embedder.device)
            logits = self.clf(layers, mask)
            total += float(F.cross_entropy(logits, torch.as_tensor(self.y[split][idx], device=logits.device),
                                           reduction="sum"))
            preds.append(logits.argmax(-1).cpu().numpy())
        return np.concatenate(preds), total / len(self.y[split])

    def _state(self) -> dict:
        state = {f"classifier.{k}": v for k, v in self.clf.state_dict().items()}
        if self.cfg.bilm.trainable:
            state.update({f"bilm.{k}": v for k, v in self.embedder.model.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def _load(self, state: dict) -> None:
        self.clf.load_state_dict({k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")})
        bilm = {k[len("bilm."):]: v for k, v in state.items() if k.startswith("bilm.")}
        if bilm:
            self.embedder.model.load_state_dict(bilm)

    def fit(self) -> list[dict]:
        history, best, bad = [], (-1.0, float("inf")), 0
        for epoch in range(1, self.cfg.train.epochs + 1):
            train_loss, train_acc = self.train_epoch()
            pred, valid_loss = self.predict("valid")
            valid_acc = float((pred == self.y["valid"]).mean())
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                            "valid_loss": valid_loss, "valid_acc": valid_acc})
            weights, gamma = _mix_weights(self.clf)
            scalars = {"train/loss": train_loss, "train/accuracy": train_acc, "valid/loss": valid_loss,
                       "valid/accuracy": valid_acc}
            if weights is not None:
                scalars.update({f"mix/weight_{k}": w for k, w in enumerate(weights)}, **{"mix/gamma": gamma})
            self.metrics.log(scalars, epoch)
            log.info("%s epoch %d: train loss %.4f acc %.4f | valid loss %.4f acc %.4f", self.variant, epoch,
                     train_loss, train_acc, valid_loss, valid_acc)
            if (valid_acc, -valid_loss) > (best[0], -best[1]):
                best, bad = (valid_acc, valid_loss), 0
                save_file(self._state(), str(self.out / "best.safetensors"))
            else:
                bad += 1
                if bad >= self.cfg.train.patience:
                    log.info("%s: no better validation accuracy for %d epochs, stopping", self.variant, bad)
                    break
        self._load(load_file(str(self.out / "best.safetensors")))
        return history

    def evaluate(self, history: list[dict]) -> dict:
        results = {}
        for split in ("train", "test"):
            pred, loss = self.predict(split)
            results[split] = report.compute_metrics(self.y[split], pred, self.label_names, loss)
        weights, gamma = _mix_weights(self.clf)
        best_epoch = max(history, key=lambda h: (h["valid_acc"], -h["valid_loss"]))["epoch"]
        summary = {"variant": self.variant, "best_epoch": best_epoch, "epochs_run": len(history),
                   "layer_weights": weights, "gamma": gamma, "train": results["train"], "test": results["test"]}
        (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
        (self.out / "report.txt").write_text(report.format_report(results, title=self.variant))
        report.plot_confusion(results["test"]["confusion_matrix"], self.label_names, self.out / "confusion_test.png",
                              title=f"{self.variant}: test")
        report.plot_curves(history, self.out / "curves.png", title=self.variant)
        self.metrics.log({"test/accuracy": results["test"]["accuracy"], "test/f1_macro": results["test"]["f1_macro"]},
                         best_epoch)
        self.metrics.close()
        return summary


def _doc_tokens(embedder: Embedder, max_tokens: int) -> Callable[[str], list[str]]:
    """A document's tokens as the biLM reads them: the run's tokenizer, cut to max_tokens."""
    return lambda text: embedder.tokenize(text)[:max_tokens] or ["<UNK>"]


def _cache_root(cfg: FinetuneConfig, embedder: Embedder, run_dir: Path) -> Path:
    if cfg.bilm.cache_dir:
        return Path(cfg.bilm.cache_dir)
    beside = (embedder.home or run_dir) / "layer_cache"
    try:
        beside.mkdir(parents=True, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    log.warning("%s is not writable; the layer cache goes to %s", beside, run_dir / "layer_cache")
    return run_dir / "layer_cache"


def layer_sources(cfg: FinetuneConfig, embedder: Embedder, splits: Splits, run_dir: Path) -> dict:
    """Per split, where the classifier's batches of layers come from: the on-disk cache of a frozen
    biLM (built on first use), or the live biLM."""
    tokens = _doc_tokens(embedder, cfg.data.max_tokens)
    texts = {s: [ex.text for ex in getattr(splits, s)] for s in ("train", "valid", "test")}
    if cfg.bilm.trainable or not cfg.bilm.cache:
        return {s: LiveLayers(embedder, [tokens(t) for t in texts[s]], cfg.bilm.trainable) for s in texts}
    root, weights = _cache_root(cfg, embedder, run_dir), weights_digest(embedder.model)
    t0 = time.perf_counter()
    sources = {s: open_or_build(embedder, texts[s], lambda i, s=s: tokens(texts[s][i]), cfg.data.max_tokens, root,
                                cfg.bilm.batch_size, weights, log=log.info) for s in texts}
    log.info("layer caches of %s documents ready in %.1f s under %s",
             f"{sum(map(len, texts.values())):,}", time.perf_counter() - t0, root)
    return sources


def finetune(cfg: FinetuneConfig) -> dict:
    setup_logging(True)
    run_dir = Path(cfg.train.run_dir)
    d = cfg.data
    splits = build_splits(d.train, d.valid, d.test, d.format, list(d.text_fields), d.label_field,
                          d.valid_fraction, d.test_fraction, d.split_seed)
    embedder = Embedder.from_run(cfg.bilm.path, cfg.train.device, cfg.bilm.sentence_boundaries)
    run_dir.mkdir(parents=True, exist_ok=True)
    configlib.save_config(cfg, run_dir / "config.yaml")
    (run_dir / "labels.json").write_text(json.dumps(splits.labels, indent=1))
    index = label_index(splits.labels)
    y = {s: np.array([index[ex.label] for ex in getattr(splits, s)]) for s in ("train", "valid", "test")}
    log.info("data: %d train / %d valid / %d test documents, %d classes; skipped %s", len(y["train"]),
             len(y["valid"]), len(y["test"]), len(splits.labels), splits.skipped or "nothing")
    sources = layer_sources(cfg, embedder, splits, run_dir)
    rows, results = [], {}
    for variant in cfg.variants or [cfg.classifier.variant]:
        # one job per variant (a Slurm array) gives each its own run_dir: no sub-folder then
        out = run_dir / variant if cfg.variants else run_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "labels.json").write_text(json.dumps(splits.labels, indent=1))
        if cfg.bilm.trainable:  # every variant starts from the pretrained biLM
            embedder = Embedder.from_run(cfg.bilm.path, cfg.train.device, cfg.bilm.sentence_boundaries)
            sources = layer_sources(cfg, embedder, splits, run_dir)
        run = VariantRun(variant, cfg, embedder, sources, y, splits.labels, out)
        summary = run.evaluate(run.fit())
        results[variant] = summary
        rows.append({"variant": variant, **{k: summary["test"][k] for k in ("accuracy", "f1_macro", "f1_weighted")},
                     "layer_weights": summary["layer_weights"], "gamma": summary["gamma"]})
    return _finish(cfg, run_dir, splits, y, rows, results)


def _finish(cfg, run_dir: Path, splits: Splits, y: dict, rows: list, results: dict) -> dict:
    baseline = None
    if cfg.baseline:
        baseline = report.tfidf_baseline([ex.text for ex in splits.train], y["train"].tolist(),
                                         [ex.text for ex in splits.test], y["test"].tolist(), splits.labels,
                                         cfg.train.seed)
        rows.append({"variant": "tfidf+logreg", **{k: baseline[k] for k in ("accuracy", "f1_macro", "f1_weighted")},
                     "layer_weights": None, "gamma": None})
    table = report.comparison_table(rows)
    summary = {"variants": results, "baseline": baseline, "labels": splits.labels, "table": rows,
               "n_train": len(y["train"]), "n_valid": len(y["valid"]), "n_test": len(y["test"]),
               "skipped": splits.skipped}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "comparison.txt").write_text(table)
    print(table, end="")
    where = f"{run_dir}/<variant>/" if cfg.variants else f"{run_dir}/"
    print(f"per-variant reports, plots and TensorBoard logs under {where} (tensorboard --logdir {run_dir})")
    return summary
