"""Classifier metrics, text reports, PNG plots and the TF-IDF baseline.

Metric values are checked twice: against numbers worked out by hand on a six-example case, and
against scikit-learn called directly. Plots are read back with matplotlib to prove they are real
PNG images; the baseline is run on generated topic data where the right answer is known.
"""
import json
import math

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from elmo_dist.classify.report import (
    comparison_table,
    compute_metrics,
    format_report,
    plot_confusion,
    plot_curves,
    tfidf_baseline,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
NAMES = ["cat", "dog", "bird"]


def test_metrics_match_hand_computed_values():
    m = compute_metrics(Y_TRUE, Y_PRED, NAMES, loss=0.5)
    # per class (tp / predicted, tp / true):  cat 1/2, 1/2   dog 2/3, 2/2   bird 1/1, 1/2
    p = [1 / 2, 2 / 3, 1.0]
    r = [1 / 2, 1.0, 1 / 2]
    f = [2 * a * b / (a + b) for a, b in zip(p, r)]  # 1/2, 4/5, 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_macro"] == pytest.approx(13 / 18)
    assert m["recall_macro"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx(59 / 90)
    assert m["f1_macro"] == pytest.approx(sum(f) / 3)
    # equal supports: weighted averages equal the macro ones
    for k in ("precision", "recall", "f1"):
        assert m[f"{k}_weighted"] == pytest.approx(m[f"{k}_macro"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    for name, pi, ri, fi in zip(NAMES, p, r, f):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1-score"]) == pytest.approx((pi, ri, fi))
        assert row["support"] == 2
    assert m["loss"] == 0.5 and m["n"] == 6


def test_metrics_match_sklearn_with_unequal_supports():
    rng = np.random.default_rng(3)
    y_true = rng.choice(4, size=200, p=[0.55, 0.25, 0.15, 0.05])
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    m = compute_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    for avg in ("macro", "weighted"):
        assert m[f"precision_{avg}"] == pytest.approx(precision_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"recall_{avg}"] == pytest.approx(recall_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(y_true, y_pred, average=avg, zero_division=0))
    assert m["f1_weighted"] != pytest.approx(m["f1_macro"])
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert np.asarray(m["confusion_matrix"]).sum() == m["n"] == 200
    assert m["loss"] is None


def test_absent_class_keeps_its_row_and_column_and_result_is_json():
    names = ["a", "b", "c", "d"]
    m = compute_metrics(np.array([0, 1, 0, 1, 2]), np.array([0, 1, 1, 1, 2]), names)
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (4, 4)
    assert cm[3].tolist() == [0, 0, 0, 0] and cm[:, 3].tolist() == [0, 0, 0, 0]
    assert m["per_class"]["d"]["support"] == 0 and m["per_class"]["d"]["f1-score"] == 0.0
    assert json.loads(json.dumps(m)) == m
    # plain Python types all the way down, not numpy scalars
    assert type(m["accuracy"]) is float and type(m["n"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert all(type(v) is float for v in m["per_class"]["a"].values())


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        compute_metrics([0, 1, 3], [0, 1, 1], NAMES)
    with pytest.raises(ValueError, match="same length"):
        compute_metrics([0, 1], [0, 1, 1], NAMES)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], NAMES)


def test_format_report_has_split_rows_and_class_names():
    train = compute_metrics([0, 1, 2, 2], [0, 1, 2, 1], NAMES, loss=0.123456)
    test = compute_metrics(Y_TRUE, Y_PRED, NAMES)
    text = format_report({"train": train, "test": test}, title="BBC demo")
    lines = text.splitlines()
    assert lines[0] == "BBC demo"
    train_row = next(ln for ln in lines if ln.startswith("train")).split()
    test_row = next(ln for ln in lines if ln.startswith("test")).split()
    assert train_row == ["train", "0.1235", "0.7500", f"{train['precision_macro']:.4f}",
                         f"{train['recall_macro']:.4f}", f"{train['f1_macro']:.4f}"]
    assert test_row == ["test", "-", "0.6667", "0.7222", "0.6667", "0.6556"]
    # the per-class part is the last split's: dog has precision 2/3, recall 1, f1 0.8, support 2
    dog = next(ln for ln in lines if ln.startswith("dog")).split()
    assert dog == ["dog", "0.6667", "1.0000", "0.8000", "2"]
    for name in NAMES + ["macro avg", "weighted avg", "accuracy"]:
        assert name in text


def test_comparison_table_lists_variants_and_weights():
    rows = [
        {"variant": "tfidf", "accuracy": 0.95, "f1_macro": 0.9412, "f1_weighted": 0.9501},
        {"variant": "elmo-mix", "accuracy": 0.97, "f1_macro": 0.968, "f1_weighted": 0.9701,
         "layer_weights": [0.2101, 0.35, 0.4399], "gamma": 1.1234},
        {"variant": "elmo-top", "accuracy": 0.96, "f1_macro": 0.955, "f1_weighted": 0.96,
         "layer_weights": [0.0, 0.0, 1.0], "gamma": None},
    ]
    text = comparison_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["variant", "accuracy", "macro-F1", "weighted-F1"]
    by_name = {ln.split()[0]: ln for ln in lines[2:]}
    assert set(by_name) == {"tfidf", "elmo-mix", "elmo-top"}
    assert by_name["tfidf"].split() == ["tfidf", "0.9500", "0.9412", "0.9501", "-"]
    assert by_name["elmo-mix"].endswith("0.21 0.35 0.44 (γ 1.12)")
    assert by_name["elmo-top"].endswith("0.00 0.00 1.00")
    assert len({len(ln) for ln in lines[:2]}) == 1  # header and rule line up


def _assert_png(path, wide=False):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05  # not a blank canvas
    if wide:
        assert img.shape[1] > 1.5 * img.shape[0]


def test_plot_confusion_writes_a_png(tmp_path):
    cm = compute_metrics(Y_TRUE, Y_PRED, NAMES)["confusion_matrix"]
    out = plot_confusion(cm, NAMES, tmp_path / "sub" / "confusion.png", title="test")
    assert out == tmp_path / "sub" / "confusion.png"
    _assert_png(out)
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="expected 2x2"):
        plot_confusion(cm, NAMES[:2], tmp_path / "bad.png")
    assert plt.get_fignums() == []


def test_plot_curves_writes_two_panel_png(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 1 - 0.5 / e,
                "valid_loss": 1.2 / e + 0.05 * e, "valid_acc": 0.8 - 0.3 / e} for e in range(1, 7)]
    history[2]["valid_loss"] = None  # an epoch without validation is skipped, not plotted as 0
    out = plot_curves(history, str(tmp_path / "curves.png"), title="BBC")
    _assert_png(out, wide=True)
    assert plt.get_fignums() == []


def _topic_corpus(n_docs, seed, n_topics=4):
    rng = np.random.default_rng(seed)
    topic_words = [[f"t{t}w{k}" for k in range(20)] for t in range(n_topics)]
    noise = [f"noise{k}" for k in range(60)] + ["the", "of", "and", "a", "to", "in"]
    texts, labels = [], []
    for _ in range(n_docs):
        t = int(rng.integers(n_topics))
        words = list(rng.choice(topic_words[t], 5)) + list(rng.choice(noise, 15))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(t)
    return texts, labels


TOPICS = ["business", "sport", "tech", "politics"]


def test_tfidf_baseline_separates_topics_and_is_deterministic():
    train_x, train_y = _topic_corpus(200, seed=0)
    test_x, test_y = _topic_corpus(100, seed=1)
    a = tfidf_baseline(train_x, train_y, test_x, test_y, TOPICS, seed=0)
    b = tfidf_baseline(train_x, train_y, test_x, test_y, TOPICS, seed=0)
    assert a == b
    assert a["accuracy"] > 0.9 and a["f1_macro"] > 0.9
    assert 0 < a["loss"] < math.log(4)
    assert a["n"] == 100 and json.loads(json.dumps(a)) == a


def test_tfidf_baseline_is_at_chance_on_random_labels():
    rng = np.random.default_rng(5)
    train_x, _ = _topic_corpus(200, seed=2)
    test_x, _ = _topic_corpus(400, seed=3)
    train_y = rng.integers(0, 4, len(train_x)).tolist()
    test_y = rng.integers(0, 4, len(test_x)).tolist()
    m = tfidf_baseline(train_x, train_y, test_x, test_y, TOPICS)
    assert abs(m["accuracy"] - 0.25) < 0.1
    assert m["loss"] > math.log(4) * 0.95  # no better than the uniform guess


def test_tfidf_baseline_covers_a_class_missing_from_training():
    train_x, train_y = _topic_corpus(120, seed=0, n_topics=3)
    test_x, test_y = _topic_corpus(40, seed=1, n_topics=4)
    m = tfidf_baseline(train_x, train_y, test_x, test_y, TOPICS)
    assert np.asarray(m["confusion_matrix"]).shape == (4, 4)
    assert m["per_class"]["politics"]["recall"] == 0.0
    assert math.isfinite(m["loss"]) and m["loss"] > 1.0  # its examples get a clipped 0 probability: large, finite
