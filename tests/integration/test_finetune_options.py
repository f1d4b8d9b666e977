"""Fine-tuning options a user reaches for: several seeds reported as mean ± std, a class-weighted
loss for imbalanced classes, early stopping on macro-F1, and a warmup + cosine learning-rate schedule."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, order_task_sentence, run_cli, write_order_task

pytestmark = pytest.mark.slow(seconds=33)  # its serial seconds: conftest starts the slowest first

FAST = ["train.device=cpu", "train.batch_size=16", "optim.lr=0.01", "classifier.dropout=0", "classifier.hidden_dim=32",
        "classifier.token_dim=32", "baseline=false"]


def test_several_seeds_are_reported_as_mean_and_std(tmp_path, tiny_bilm):
    data = write_order_task(tmp_path / "task.jsonl", 200, seed=0)
    proc = run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}", f"data.train={data}",
                   f"train.run_dir={tmp_path / 'ft'}", "variants=[frozen,top]", "train.seeds=[0,1,2]",
                   "train.epochs=3", *FAST)
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    for row in summary["table"]:
        per_seed = [json.loads((tmp_path / "ft" / row["variant"] / f"seed-{s}" / "metrics.json").read_text())
                    for s in (0, 1, 2)]
        accs = [m["test"]["accuracy"] for m in per_seed]
        assert [m["seed"] for m in per_seed] == [0, 1, 2]
        assert row["accuracy_per_seed"] == accs
        assert row["accuracy"] == pytest.approx(np.mean(accs)) and row["accuracy_std"] == pytest.approx(np.std(accs))
    table = (tmp_path / "ft" / "comparison.txt").read_text()
    assert table == proc.stdout[: len(table)]
    assert table.count("±") == 6 + 1 and "mean ± std over seeds [0, 1, 2]" in table  # 2 rows x 3 columns, the note


def write_imbalanced(path, n, seed, minority=0.05):
    """Which animal the sentence is about, with one class rare: 'bird' in about 5% of the sentences."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a = "bird" if rng.random() < minority else "cat"
            f.write(json.dumps({"text": order_task_sentence(rng, a, "fish"), "label": a}) + "\n")
    return path


def test_balanced_weights_and_f1_stopping_stop_ignoring_the_small_class(tmp_path, tiny_bilm):
    train = write_imbalanced(tmp_path / "train.jsonl", 400, seed=1)
    test = write_imbalanced(tmp_path / "test.jsonl", 400, seed=2, minority=0.25)
    results = {}
    for name, extra in (("plain", []), ("balanced", ["train.class_weights=balanced", "train.early_stopping=f1_macro"])):
        run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}", f"data.train={train}",
                f"data.test={test}", f"train.run_dir={tmp_path / name}", "variants=[scalar_mix]", "train.epochs=5",
                "train.patience=5", *FAST, "optim.lr=0.001", *extra,
                "words.dim=0", "classifier.elmo_dropout=0")  # the ELMo-only head: x_k makes every class easy
        results[name] = json.loads((tmp_path / name / "summary.json").read_text())
    plain, balanced = (results[k]["variants"]["scalar_mix"]["test"] for k in ("plain", "balanced"))
    small = "bird"
    print(f"\nminority recall: plain {plain['per_class'][small]['recall']:.3f}, "
          f"balanced {balanced['per_class'][small]['recall']:.3f}; macro-F1 {plain['f1_macro']:.3f} -> "
          f"{balanced['f1_macro']:.3f}")
    assert balanced["per_class"][small]["recall"] > plain["per_class"][small]["recall"]
    assert balanced["f1_macro"] > plain["f1_macro"]
    assert results["balanced"]["class_weights"] == "balanced" and results["balanced"]["early_stopping"] == "f1_macro"
    note = (tmp_path / "balanced" / "comparison.txt").read_text().splitlines()[-1]
    assert "best epoch by validation f1_macro" in note and "class weights: balanced" in note


def test_early_stopping_on_macro_f1_keeps_the_epoch_with_the_best_validation_f1(tmp_path, tiny_bilm):
    train = write_imbalanced(tmp_path / "train.jsonl", 300, seed=3, minority=0.3)
    run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}", f"data.train={train}",
            f"train.run_dir={tmp_path / 'ft'}", "variants=[scalar_mix]", "train.epochs=5", "train.patience=5",
            "train.early_stopping=f1_macro", *FAST, "optim.lr=0.001", "optim.warmup_steps=3", "optim.decay=cosine")
    metrics = json.loads((tmp_path / "ft" / "scalar_mix" / "metrics.json").read_text())
    ea = EventAccumulator(str(tmp_path / "ft" / "scalar_mix" / "tensorboard"))
    ea.Reload()
    f1 = {e.step: e.value for e in ea.Scalars("valid/f1_macro")}
    loss = {e.step: e.value for e in ea.Scalars("valid/loss")}
    assert len(f1) == 5 and len(set(f1.values())) > 1
    # the best validation macro-F1; among equals, the lower validation loss
    assert metrics["best_epoch"] == max(f1, key=lambda s: (f1[s], -loss[s]))
    # the cosine schedule: the lr of each epoch's last step falls towards 0 at the last epoch
    lr = [e.value for e in ea.Scalars("train/lr")]
    assert lr == sorted(lr, reverse=True) and lr[0] < 0.001 and lr[-1] < 0.001 * 0.02


def test_a_bad_option_is_one_line_naming_its_key(tmp_path, tiny_bilm):
    data = write_order_task(tmp_path / "task.jsonl", 50, seed=0)
    for bad, key in (("train.early_stopping=loss", "train.early_stopping"),
                     ("train.class_weights=inverse", "train.class_weights"),
                     ("train.seeds=[1,1]", "train.seeds"), ("optim.decay=exponential", "optim.decay")):
        proc = run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}",
                       f"data.train={data}", bad, check=False)
        assert proc.returncode == 2 and key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
