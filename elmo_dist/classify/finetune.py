"""`elmo-dist finetune CONFIG [key=value ...]`: text classifiers on a pretrained biLM's layers.

    elmo-dist finetune configs/finetune.yaml bilm.path=runs/demo/pretrain data.train=news.csv \
        "variants=[frozen,scalar_mix,learned_fn,top]"

    torchrun --nproc_per_node 4 -m elmo_dist finetune configs/finetune.yaml ...   # data parallel

Each of `variants` trains in RUN_DIR/<variant>/ (with `variants: []`, the one `classifier.variant`
trains in RUN_DIR itself; with several `train.seeds`, in .../seed-<s>/): best weights, metrics.json,
report.txt, confusion matrix and training-curve PNGs, TensorBoard events. Then a comparison table
(mean ± std over the seeds) with a TF-IDF + logistic-regression baseline on the same split is
printed and written to RUN_DIR/summary.json and comparison.txt. With a frozen biLM (the default)
every document's layers are computed once into the on-disk cache (elmo_dist.classify.cache) and
shared by all epochs, variants and seeds; with `bilm.trainable=true` they are recomputed with
gradients every batch. Several processes split the documents and agree on every step
(elmo_dist.classify.variant); only the main process writes.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from elmo_dist.classify import report
from elmo_dist.classify.cache import open_or_build, weights_digest
from elmo_dist.classify.documents import Splits, build_splits, label_index
from elmo_dist.classify.variant import VariantRun
from elmo_dist.config import FinetuneConfig
from elmo_dist.config import base as config_base
from elmo_dist.embedder import Embedder
from elmo_dist.files import refuse_overwrite
from elmo_dist.runtime.accel import broadcast, build_accelerator, shut_down
from elmo_dist.runtime.lock import RunDirLock, own_run_dir
from elmo_dist.runtime.logs import log, setup_logging


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


def layer_sources(cfg: FinetuneConfig, embedder: Embedder, splits: Splits, run_dir: Path, acc) -> dict:
    """Per split, where the classifier's batches of layers come from: the on-disk cache of a frozen
    biLM (built on first use), or the live biLM."""
    tokens = _doc_tokens(embedder, cfg.data.max_tokens)
    texts = {s: [ex.text for ex in getattr(splits, s)] for s in ("train", "valid", "test")}
    if cfg.bilm.trainable or not cfg.bilm.cache:
        return {s: LiveLayers(embedder, [tokens(t) for t in texts[s]], cfg.bilm.trainable) for s in texts}
    root, weights = _cache_root(cfg, embedder, run_dir), weights_digest(embedder.model)
    t0 = time.perf_counter()
    sources = {s: open_or_build(embedder, texts[s], lambda i, s=s: tokens(texts[s][i]), cfg.data.max_tokens, root,
                                cfg.bilm.batch_size, weights, acc, log=log.info) for s in texts}
    log.info("layer caches of %s documents ready in %.1f s under %s",
             f"{sum(map(len, texts.values())):,}", time.perf_counter() - t0, root)
    return sources


def _labels(splits: Splits) -> dict[str, np.ndarray]:
    index = label_index(splits.labels)
    return {s: np.array([index[ex.label] for ex in getattr(splits, s)]) for s in ("train", "valid", "test")}


def finetune(cfg: FinetuneConfig) -> dict:
    """Train every variant (x every seed), compare them with the TF-IDF baseline; the summary. One
    process, or the process group a launcher started (torchrun, `accelerate launch`, srun)."""
    acc = build_accelerator(cfg.train.device, cfg.dist)
    setup_logging(acc.is_main_process)
    lock = RunDirLock(cfg.train.run_dir)
    own_run_dir(lock, acc.is_main_process, lambda obj: broadcast(acc, obj))  # held by the main process only
    try:
        summary = _finetune(cfg, acc)
    finally:
        lock.release()
    shut_down(acc)
    return summary


_RUN_FILES = ("config.yaml", "labels.json", "summary.json", "comparison.txt")  # what RUN_DIR holds at its top


def _finetune(cfg: FinetuneConfig, acc) -> dict:
    run_dir, d = Path(cfg.train.run_dir), cfg.data
    device = str(acc.device)
    splits = build_splits(d.train, d.valid, d.test, d.format, list(d.text_fields), d.label_field,
                          d.valid_fraction, d.test_fraction, d.split_seed)
    embedder = Embedder.from_run(cfg.bilm.path, device, cfg.bilm.sentence_boundaries)
    # a run directory that is the biLM's own would have its config.yaml and summary.json replaced
    inputs = [*embedder.source_files(), *(Path(p) for p in (d.train, d.valid, d.test) if p)]
    refuse_overwrite([run_dir / name for name in _RUN_FILES], inputs, "finetune")
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_base.save_config(cfg, run_dir / "config.yaml")
        (run_dir / "labels.json").write_text(json.dumps(splits.labels, indent=1))
    y = _labels(splits)
    log.info("data: %d train / %d valid / %d test documents, %d classes; skipped %s; %d process(es)",
             len(y["train"]), len(y["valid"]), len(y["test"]), len(splits.labels), splits.skipped or "nothing",
             acc.num_processes)
    sources = layer_sources(cfg, embedder, splits, run_dir, acc)
    seeds = list(cfg.train.seeds) or [cfg.train.seed]
    results: dict[str, list[dict]] = {}
    for variant in cfg.variants or [cfg.classifier.variant]:
        for seed in seeds:
            # one job per variant (a Slurm array) gives each its own run_dir: no sub-folder then
            out = run_dir / variant if cfg.variants else run_dir
            out = out / f"seed-{seed}" if len(seeds) > 1 else out
            if acc.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                (out / "labels.json").write_text(json.dumps(splits.labels, indent=1))
            if cfg.bilm.trainable:  # every run starts from the pretrained biLM
                embedder = Embedder.from_run(cfg.bilm.path, device, cfg.bilm.sentence_boundaries)
                sources = layer_sources(cfg, embedder, splits, run_dir, acc)
            run = VariantRun(variant, cfg, embedder, sources, y, splits.labels, out, acc, seed)
            results.setdefault(variant, []).append(run.evaluate(run.fit()))
    return _finish(cfg, run_dir, splits, y, results, acc)


_REPORTED = ("accuracy", "f1_macro", "f1_weighted")


def _variant_row(variant: str, runs: list[dict]) -> tuple[dict, dict]:
    """(the comparison-table row, the variant's summary entry): one run as it is, several as
    mean and standard deviation over the seeds (population std, numpy's default)."""
    if len(runs) == 1:
        r = runs[0]
        return {"variant": variant, **{k: r["test"][k] for k in _REPORTED}, "layer_weights": r["layer_weights"],
                "gamma": r["gamma"]}, r
    row = {"variant": variant, "seeds": [r["seed"] for r in runs]}
    for k in _REPORTED:
        values = np.array([r["test"][k] for r in runs])
        row.update({k: float(values.mean()), f"{k}_std": float(values.std()), f"{k}_per_seed": values.tolist()})
    weights = [r["layer_weights"] for r in runs if r["layer_weights"] is not None]
    row["layer_weights"] = np.mean(weights, axis=0).round(4).tolist() if weights else None
    gammas = [r["gamma"] for r in runs if r["gamma"] is not None]
    row["gamma"] = round(float(np.mean(gammas)), 4) if gammas else None
    return row, {"variant": variant, "runs": runs, "test": {k: row[k] for k in _REPORTED},
                 "test_std": {k: row[f"{k}_std"] for k in _REPORTED}}


def _finish(cfg, run_dir: Path, splits: Splits, y: dict, results: dict, acc) -> dict:
    rows, variants = [], {}
    for variant, runs in results.items():
        row, entry = _variant_row(variant, runs)
        rows.append(row)
        variants[variant] = entry
    baseline = None
    if cfg.baseline:
        row = {"variant": "tfidf+logreg", "layer_weights": None, "gamma": None}
        try:
            baseline = {"fitted": True, **report.tfidf_baseline(
                [ex.text for ex in splits.train], y["train"].tolist(), [ex.text for ex in splits.test],
                y["test"].tolist(), splits.labels, cfg.train.seed)}
            row.update({k: baseline[k] for k in _REPORTED})
        except report.BaselineNotFitted as e:
            # the variants' results are what the run was for: report the missing baseline and keep them
            log.warning("the TF-IDF baseline could not be fitted: %s; the comparison goes without it", e)
            baseline = {"fitted": False, "reason": str(e)}
            row.update({**dict.fromkeys(_REPORTED), "not_fitted": str(e)})
        rows.append(row)
    seeds = list(cfg.train.seeds) or [cfg.train.seed]
    options = {"seeds": seeds, "early_stopping": cfg.train.early_stopping, "class_weights": cfg.train.class_weights}
    note = (f"test set, {len(y['test']):,} documents; " + (f"mean ± std over seeds {seeds}; " if len(seeds) > 1
                                                             else f"seed {seeds[0]}; ")
            + f"best epoch by validation {cfg.train.early_stopping}; class weights: {cfg.train.class_weights}")
    table = report.comparison_table(rows, note)
    summary = {"variants": variants, "baseline": baseline, "labels": splits.labels, "table": rows, **options,
               "n_train": len(y["train"]), "n_valid": len(y["valid"]), "n_test": len(y["test"]),
               "skipped": splits.skipped, "processes": acc.num_processes}
    if acc.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        (run_dir / "comparison.txt").write_text(table)
        print(table, end="")
        where = f"{run_dir}/<variant>/" if cfg.variants else f"{run_dir}/"
        print(f"per-variant reports, plots and TensorBoard logs under {where} (tensorboard --logdir {run_dir})")
    return summary
