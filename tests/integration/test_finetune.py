"""Fine-tuning the classifier variants through the real CLI, the embedder API and `elmo-dist embed`."""
from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import EPS32, REPO, best_weights, f32_bound, order_task_sentence, run_cli, write_order_task

pytestmark = pytest.mark.slow(seconds=92)  # its serial seconds: conftest starts the slowest first

FAST = ["train.device=cpu", "train.epochs=12", "train.patience=12", "train.batch_size=16", "optim.lr=0.003",
        "classifier.hidden_dim=64", "classifier.dropout=0.1", "bilm.batch_size=64"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def variants_run(tmp_path_factory, tiny_bilm):
    d = tmp_path_factory.mktemp("order")
    write_order_task(d / "train.jsonl", 320, 0)
    write_order_task(d / "test.jsonl", 120, 1)
    proc = run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}",
                   f"data.train={d / 'train.jsonl'}", f"data.test={d / 'test.jsonl'}", f"train.run_dir={d / 'ft'}",
                   "variants=[frozen,scalar_mix,learned_fn,top]", *FAST)
    return d / "ft", proc


def test_every_variant_learns_a_context_dependent_label(variants_run):
    run, proc = variants_run
    summary = json.loads((run / "summary.json").read_text())
    for variant in ("frozen", "scalar_mix", "learned_fn", "top"):
        acc = summary["variants"][variant]["test"]["accuracy"]
        assert acc >= 0.8, (variant, acc)  # chance is 0.5: the bag of words is identical in both classes
        assert variant in proc.stdout
    assert "tfidf+logreg" in proc.stdout and summary["baseline"]["accuracy"] > 0
    assert summary["labels"] == ["cat_first", "fish_first"]


def test_frozen_weights_stay_fixed_and_scalar_mix_learns_them(variants_run):
    run, _ = variants_run
    frozen = best_weights(run / "frozen")
    assert frozen["classifier.mix.weights"].abs().max() == 0 and float(frozen["classifier.mix.gamma"]) == 1.0
    mixed = best_weights(run / "scalar_mix")
    assert mixed["classifier.mix.weights"].abs().max() > 1e-3
    m = json.loads((run / "scalar_mix" / "metrics.json").read_text())
    # a float32 softmax (sum within 3 EPS32 of 1), each weight rounded to 4 decimals (0.5e-4)
    assert len(m["layer_weights"]) == 3 and abs(sum(m["layer_weights"]) - 1) <= 3 * 0.5e-4 + 3 * EPS32
    assert m["layer_weights"] != [0.3333, 0.3333, 0.3333]
    assert json.loads((run / "frozen" / "metrics.json").read_text())["layer_weights"] == [0.3333, 0.3333, 0.3333]
    ea = EventAccumulator(str(run / "scalar_mix" / "tensorboard"))
    ea.Reload()
    w0 = [e.value for e in ea.Scalars("mix/weight_0")]
    assert len(w0) == 12 and len(set(w0)) > 1  # logged every epoch, and it moves


def test_each_variant_writes_its_reports_and_plots(variants_run):
    run, _ = variants_run
    for variant in ("frozen", "scalar_mix", "learned_fn", "top"):
        d = run / variant
        m = json.loads((d / "metrics.json").read_text())
        for split in ("train", "test"):
            for key in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "per_class"):
                assert key in m[split]
        assert "Accuracy" in (d / "report.txt").read_text() and "cat_first" in (d / "report.txt").read_text()
        for png in ("confusion_test.png", "curves.png"):
            assert (d / png).read_bytes()[:8] == PNG
        assert json.loads((d / "labels.json").read_text()) == ["cat_first", "fish_first"]
    assert (run / "config.yaml").is_file() and "variant" in (run / "comparison.txt").read_text()


def write_agnews(path, n, seed):
    """AG News layout: "class index","title","description", no header; classes 1..4 by topic words."""
    rng = np.random.default_rng(seed)
    topics = {1: "cat", 2: "dog", 3: "bird", 4: "fish"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for _ in range(n):
            c = int(rng.integers(1, 5))
            other = topics[int(rng.integers(1, 5))]
            w.writerow([c, f"the {topics[c]} news",
                        order_task_sentence(rng, topics[c], other).replace(" .", ", \\ ok .")])
    return path


def test_agnews_csv_trains_and_evaluates_end_to_end(tmp_path, tiny_bilm):
    write_agnews(tmp_path / "train.csv", 240, 0)
    write_agnews(tmp_path / "test.csv", 80, 1)
    proc = run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}",
                   f"data.train={tmp_path / 'train.csv'}", f"data.test={tmp_path / 'test.csv'}",
                   f"train.run_dir={tmp_path / 'ft'}", "variants=[scalar_mix]", *FAST)
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert summary["n_test"] == 80
    assert summary["variants"]["scalar_mix"]["test"]["accuracy"] > 0.9
    assert "scalar_mix" in proc.stdout


def test_finetune_bad_row_names_file_and_line(tmp_path, tiny_bilm):
    (tmp_path / "bad.csv").write_text('"1","a title","a text"\n"2","only two fields"\n')
    proc = run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}",
                   f"data.train={tmp_path / 'bad.csv'}", "data.format=agnews", f"train.run_dir={tmp_path / 'ft'}",
                   check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'bad.csv'}:2:" in lines[0]
    assert not (tmp_path / "ft" / "summary.json").exists()


def test_embed_writes_the_documented_hdf5_layout(tmp_path, tiny_bilm):
    from elmo_dist.embedder import Embedder

    (tmp_path / "s.txt").write_text("the cat sees the fish .\n\na dog likes some bread today .\n")
    proc = run_cli("embed", str(tiny_bilm), str(tmp_path / "s.txt"), str(tmp_path / "out.hdf5"))
    assert "1 empty lines skipped" in proc.stdout
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    assert (elmo.n_layers, elmo.dim) == (3, 64)  # n_layers + 1, 2 x projection_dim
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert sorted(k for k in f.keys() if k != "sentence_to_index") == ["0", "2"]
        assert f["0"].shape == (3, 6, 64) and f["2"].shape == (3, 7, 64)
        index = json.loads(f["sentence_to_index"][()])
        assert index["the cat sees the fish ."] == "0"
        api = elmo.embed_sentences([["the", "cat", "sees", "the", "fish", "."]])[0]
        # the command ran both lines in one batch (9 steps with <S> and </S>), the API this one alone:
        # other shapes round differently, within float32's rounding
        bound = f32_bound(float(np.abs(api).max()), 9, elmo.cfg.model)
        np.testing.assert_allclose(f["0"][()], api, rtol=0, atol=bound)
        # the token layer is [emb; emb] (one tensor twice) and does not depend on context
        np.testing.assert_array_equal(f["0"][0, :, :32], f["0"][0, :, 32:])
    run_cli("embed", str(tiny_bilm), str(tmp_path / "s.txt"), str(tmp_path / "mix.hdf5"), "--weights", "0.2,0.3,0.5")
    with h5py.File(tmp_path / "mix.hdf5", "r") as f, h5py.File(tmp_path / "out.hdf5", "r") as g:
        assert f["2"].shape == (7, 64)
        # the same layers as out.hdf5's (same batch, same kernels), mixed in float32: the weights' rounding,
        # 3 products and 2 sums, 6 roundings of EPS32 / 2 on values <= sum_l w_l |x_l| <= max |x|
        want = np.tensordot([0.2, 0.3, 0.5], g["2"][()], axes=1)
        np.testing.assert_allclose(f["2"][()], want, rtol=0, atol=3 * EPS32 * float(np.abs(g["2"][()]).max()))


def test_same_seed_same_result_and_trainable_bilm_moves(tmp_path, tiny_bilm):
    write_order_task(tmp_path / "train.jsonl", 160, 0)
    args = ["finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}",
            f"data.train={tmp_path / 'train.jsonl'}", "variants=[scalar_mix]", "baseline=false", *FAST,
            "train.epochs=3"]
    run_cli(*args, f"train.run_dir={tmp_path / 'a'}")
    run_cli(*args, f"train.run_dir={tmp_path / 'b'}")
    a = json.loads((tmp_path / "a" / "scalar_mix" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "scalar_mix" / "metrics.json").read_text())
    assert a == b
    run_cli(*args, f"train.run_dir={tmp_path / 't'}", "bilm.trainable=true", "bilm.lr=0.01")
    tuned = best_weights(tmp_path / "t" / "scalar_mix")
    pretrained = load_file(str(sorted((tiny_bilm / "checkpoints").iterdir())[-1] / "model.safetensors"))
    name = "forward_lstm.layers.0.lstm.weight_hh_l0"
    assert (tuned["bilm." + name] - pretrained[name]).abs().max() > 1e-4
