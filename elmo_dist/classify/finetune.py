"""`elmo-dist finetune CONFIG [key=value ...]`: task models with ELMo added, compared with the same
task model without it (Peters et al., 2018, section 3.3): text classification or sequence tagging.

    elmo-dist finetune configs/finetune.yaml bilm.path=runs/demo/pretrain data.train=news.csv \
        "variants=[no_elmo,frozen,scalar_mix,learned_fn,top]"
    elmo-dist finetune configs/tagging.yaml bilm.path=runs/demo/pretrain data.train=brown/train.conll

    torchrun --nproc_per_node 4 -m elmo_dist finetune configs/finetune.yaml ...   # data parallel

Each of `variants` trains in RUN_DIR/<variant>/ (with `variants: []`, the one `classifier.variant`
trains in RUN_DIR itself; with several `train.seeds`, in .../seed-<s>/): the best epoch's checkpoint,
metrics.json, report.txt, plots, TensorBoard events (and, tagging, the test predictions as CoNLL).
Then a comparison table (mean ± std over the seeds) is printed and written to RUN_DIR/summary.json
and comparison.txt: `no_elmo` first, every other row with its difference to it, so the table says
what ELMo adds (and, classifying, a TF-IDF + logistic-regression row on the same split). With a
frozen biLM (the default) every unit's layers are computed once into the on-disk cache
(elmo_dist.classify.cache) and shared by all epochs, variants and seeds; `no_elmo` reads none; with
`bilm.trainable=true` they are recomputed with gradients every batch. Several processes split the
units and agree on every step (elmo_dist.classify.variant); only the main process writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from elmo_dist.classify import report
from elmo_dist.classify.documents import build_splits, label_index
from elmo_dist.classify.inputs import TaskData, classification_data, layer_sources, tagged_splits, tagging_data
from elmo_dist.classify.objectives import build_objective
from elmo_dist.classify.variant import VariantRun
from elmo_dist.classify.words import load_vectors
from elmo_dist.config import FinetuneConfig
from elmo_dist.config import base as config_base
from elmo_dist.embedder import Embedder
from elmo_dist.files import refuse_overwrite
from elmo_dist.runtime.accel import broadcast, build_accelerator, shut_down
from elmo_dist.runtime.lock import RunDirLock, own_run_dir
from elmo_dist.runtime.logs import log, setup_logging


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


def _task_data(cfg: FinetuneConfig, embedder: Embedder) -> tuple[TaskData, dict, list[Path]]:
    """(the task's units, what was skipped reading them, the input files)."""
    d = cfg.data
    files = [Path(p) for p in (d.train, d.valid, d.test) if p]
    if cfg.task == "tagging":
        sets = tagged_splits(d, cfg.train.seed)
        return tagging_data(cfg, sets), {s: dict(t.skipped) for s, t in sets.items() if t.skipped}, files
    splits = build_splits(d.train, d.valid, d.test, d.format, list(d.text_fields), d.label_field,
                          d.valid_fraction, d.test_fraction, d.split_seed)
    data = classification_data(cfg, embedder, splits, label_index(splits.labels))
    data.documents = splits  # the TF-IDF baseline reads the texts
    return data, splits.skipped, files


def _finetune(cfg: FinetuneConfig, acc) -> dict:
    run_dir = Path(cfg.train.run_dir)
    embedder = Embedder.from_run(cfg.bilm.path, str(acc.device), cfg.bilm.sentence_boundaries)
    data, skipped, files = _task_data(cfg, embedder)
    # a run directory that is the biLM's own would have its config.yaml and summary.json replaced
    refuse_overwrite([run_dir / name for name in _RUN_FILES], [*embedder.source_files(), *files], "finetune")
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_base.save_config(cfg, run_dir / "config.yaml")
        (run_dir / "labels.json").write_text(json.dumps(data.names, indent=1))
    n = {s: len(data.ids[s]) for s in ("train", "valid", "test")}
    log.info("data: %d train / %d valid / %d test %s, %d %s, %d words for x_k; skipped %s; %d process(es)",
             n["train"], n["valid"], n["test"], "sentences" if cfg.task == "tagging" else "documents",
             len(data.names), "tags" if cfg.task == "tagging" else "classes", len(data.vocab) - 2,
             skipped or "nothing", acc.num_processes)
    variants = list(cfg.variants) or [cfg.classifier.variant]
    reads_elmo = any(v != "no_elmo" for v in variants)
    sources = layer_sources(cfg, embedder, data, run_dir, acc) if reads_elmo else None
    vectors = _vectors(cfg, data)
    objective = build_objective(cfg, data, embedder.device)
    seeds = list(cfg.train.seeds) or [cfg.train.seed]
    results: dict[str, list[dict]] = {}
    for variant in variants:
        for seed in seeds:
            # one job per variant (a Slurm array) gives each its own run_dir: no sub-folder then
            out = run_dir / variant if cfg.variants else run_dir
            out = out / f"seed-{seed}" if len(seeds) > 1 else out
            if acc.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                (out / "labels.json").write_text(json.dumps(data.names, indent=1))
            if cfg.bilm.trainable and variant != "no_elmo":  # every run starts from the pretrained biLM
                embedder = Embedder.from_run(cfg.bilm.path, str(acc.device), cfg.bilm.sentence_boundaries)
                sources = layer_sources(cfg, embedder, data, run_dir, acc)
            run = VariantRun(variant, cfg, data, objective, embedder, sources, out, acc, seed, vectors)
            results.setdefault(variant, []).append(run.evaluate(run.fit()))
    return _finish(cfg, run_dir, data, objective, results, skipped, acc)


def _vectors(cfg: FinetuneConfig, data: TaskData):
    if not cfg.words.vectors:
        return None
    table, found = load_vectors(cfg.words.vectors, data.vocab, cfg.words.dim, cfg.train.seed)
    log.info("x_k starts from %s: %s of %s training words found", cfg.words.vectors, f"{found:,}",
             f"{len(data.vocab) - 2:,}")
    return table


def _variant_row(variant: str, runs: list[dict], keys: tuple[str, ...]) -> tuple[dict, dict]:
    """(the comparison-table row, the variant's summary entry): one run as it is, several as
    mean and standard deviation over the seeds (population std, numpy's default)."""
    if len(runs) == 1:
        r = runs[0]
        return {"variant": variant, **{k: r["test"][k] for k in keys}, "layer_weights": r["layer_weights"],
                "gamma": r["gamma"]}, r
    row = {"variant": variant, "seeds": [r["seed"] for r in runs]}
    for k in keys:
        values = np.array([r["test"][k] for r in runs])
        row.update({k: float(values.mean()), f"{k}_std": float(values.std()), f"{k}_per_seed": values.tolist()})
    weights = [r["layer_weights"] for r in runs if r["layer_weights"] is not None]
    row["layer_weights"] = np.mean(weights, axis=0).round(4).tolist() if weights else None
    gammas = [r["gamma"] for r in runs if r["gamma"] is not None]
    row["gamma"] = round(float(np.mean(gammas)), 4) if gammas else None
    return row, {"variant": variant, "runs": runs, "test": {k: row[k] for k in keys},
                 "test_std": {k: row[f"{k}_std"] for k in keys}}


def _baseline_row(cfg, data: TaskData, keys: tuple[str, ...]) -> tuple[dict, dict]:
    """The TF-IDF + logistic-regression row, or a row that says why it could not be fitted."""
    splits, y = data.documents, data.targets
    row = {"variant": "tfidf+logreg", "layer_weights": None, "gamma": None}
    try:
        baseline = {"fitted": True, **report.tfidf_baseline(
            [ex.text for ex in splits.train], y["train"].tolist(), [ex.text for ex in splits.test],
            y["test"].tolist(), data.names, cfg.train.seed)}
        row.update({k: baseline[k] for k in keys})
    except report.BaselineNotFitted as e:
        # the variants' results are what the run was for: report the missing baseline and keep them
        log.warning("the TF-IDF baseline could not be fitted: %s; the comparison goes without it", e)
        baseline = {"fitted": False, "reason": str(e)}
        row.update({**dict.fromkeys(keys), "not_fitted": str(e)})
    return row, baseline


def _finish(cfg, run_dir: Path, data: TaskData, objective, results: dict, skipped: dict, acc) -> dict:
    keys = tuple(k for k, _ in objective.reported)
    rows, variants = [], {}
    for variant in sorted(results, key=lambda v: v != "no_elmo"):  # no_elmo first: the others are read against it
        row, entry = _variant_row(variant, results[variant], keys)
        rows.append(row)
        variants[variant] = entry
    baseline = None
    if cfg.baseline and cfg.task == "classification":
        row, baseline = _baseline_row(cfg, data, keys)
        rows.append(row)
    seeds = list(cfg.train.seeds) or [cfg.train.seed]
    options = {"task": cfg.task, "seeds": seeds, "early_stopping": cfg.train.early_stopping,
               "class_weights": cfg.train.class_weights}
    n_test = len(data.ids["test"])
    note = (f"test set, {n_test:,} {objective.units}; " + (f"mean ± std over seeds {seeds}; " if len(seeds) > 1
                                                           else f"seed {seeds[0]}; ")
            + f"best epoch by validation {cfg.train.early_stopping}")
    note += f"; class weights: {cfg.train.class_weights}" if cfg.task == "classification" else \
        f"; tags: {objective.scheme}"
    table = report.comparison_table(rows, note, objective.reported)
    summary = {"variants": variants, "baseline": baseline, "labels": data.names, "table": rows, **options,
               "n_train": len(data.ids["train"]), "n_valid": len(data.ids["valid"]), "n_test": n_test,
               "skipped": skipped, "processes": acc.num_processes}
    if acc.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        (run_dir / "comparison.txt").write_text(table)
        print(table, end="")
        where = f"{run_dir}/<variant>/" if cfg.variants else f"{run_dir}/"
        print(f"per-variant reports, plots and TensorBoard logs under {where} (tensorboard --logdir {run_dir})")
    return summary
