"""Metrics, text reports, plots and a TF-IDF baseline for the downstream classifier.

    from elmo_dist.classify.report import compute_metrics, format_report; print(format_report({"test": m}))

Every number comes from scikit-learn; this module only picks the label set, converts the results
to plain Python types (so they go straight into JSON) and lays them out. Metrics are always taken
over the full label set 0..len(labels)-1, so a class that is missing from a split still gets its
row and column in the confusion matrix and its line in the per-class report. Plots use the Agg
backend: they work on a headless node and every figure is closed once written.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on training nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)
from threadpoolctl import threadpool_limits  # noqa: E402

# scikit-learn brings scipy, whose OpenBLAS starts its own worker threads; they busy-wait beside
# torch's OpenMP threads and, on 2 cores, slowed the biLM's LSTMs 80-fold (18k -> 230 tokens/s,
# docs/performance.md). BLAS work here is small (the TF-IDF baseline), torch keeps its own threads.
threadpool_limits(1, user_api="blas")

_AVERAGE_KEYS = ("accuracy", "macro avg", "weighted avg", "micro avg")
_DPI = 100
_BASELINE_C = 10.0  # weak regularisation: bag-of-n-grams topic data is close to separable
_BASELINE_MIN_DF = 2  # n-grams seen once are mostly noise and double the vocabulary


def _plain(x):
    """numpy scalars and arrays, nested in dicts and lists, to plain Python ints/floats/lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    return x


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> None:
    if len(set(labels)) != len(labels):
        raise ValueError(f"label names must be unique, got {labels}")
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and the same length, got {y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on an empty split")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        bad = y[(y < 0) | (y >= len(labels))]
        if len(bad):
            raise ValueError(f"{name} has label index {int(bad[0])} outside 0..{len(labels) - 1} "
                             f"({len(labels)} labels)")


def compute_metrics(y_true, y_pred, labels: list[str], loss: float | None = None) -> dict:
    """Accuracy, macro/weighted P/R/F1, per-class report and confusion matrix, as plain Python types.

    `y_true`/`y_pred` are label indices into `labels`. Averages run over all of `labels` with
    zero_division=0, the same label set as the per-class report and the confusion matrix.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    _check_labels(y_true, y_pred, labels)
    idx = list(range(len(labels)))
    out: dict = {"loss": None if loss is None else float(loss), "accuracy": accuracy_score(y_true, y_pred)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=idx, average=avg, zero_division=0)
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    out["per_class"] = classification_report(y_true, y_pred, labels=idx, target_names=list(labels),
                                             output_dict=True, zero_division=0)
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=idx)
    out["n"] = len(y_true)
    return _plain(out)


def _fmt(x, width: int, digits: int = 4) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def _per_class_lines(per_class: dict) -> list[str]:
    classes = [k for k, v in per_class.items() if isinstance(v, dict) and k not in _AVERAGE_KEYS]
    name_w = max([len(k) for k in classes] + [len("weighted avg")])
    head = f"{'':<{name_w}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>9}"
    lines = [head, ""]
    for k in classes:
        v = per_class[k]
        lines.append(f"{k:<{name_w}}  {v['precision']:>9.4f}  {v['recall']:>9.4f}  "
                     f"{v['f1-score']:>9.4f}  {int(v['support']):>9d}")
    lines.append("")
    if "accuracy" in per_class:
        support = int(per_class.get("macro avg", {}).get("support", 0))
        lines.append(f"{'accuracy':<{name_w}}  {'':>9}  {'':>9}  {per_class['accuracy']:>9.4f}  {support:>9d}")
    for k in ("micro avg", "macro avg", "weighted avg"):
        if k in per_class:
            v = per_class[k]
            lines.append(f"{k:<{name_w}}  {v['precision']:>9.4f}  {v['recall']:>9.4f}  "
                         f"{v['f1-score']:>9.4f}  {int(v['support']):>9d}")
    return lines


def format_report(metrics_by_split: dict[str, dict], title: str = "") -> str:
    """One row per split (loss, accuracy, macro P/R/F1), then the per-class report of the last split."""
    if not metrics_by_split:
        raise ValueError("format_report needs at least one split")
    split_w = max(len("split"), *(len(s) for s in metrics_by_split))
    cols = ("Loss", "Accuracy", "Precision", "Recall", "F1")
    head = f"{'split':<{split_w}}" + "".join(f"  {c:>9}" for c in cols)
    lines = [title, "=" * len(head)] if title else []
    lines += [head, "-" * len(head)]
    for split, m in metrics_by_split.items():
        vals = (m.get("loss"), m["accuracy"], m["precision_macro"], m["recall_macro"], m["f1_macro"])
        lines.append(f"{split:<{split_w}}" + "".join(f"  {_fmt(v, 9)}" for v in vals))
    last_split, last = list(metrics_by_split.items())[-1]
    lines += ["", f"Per-class report ({last_split}, n={last.get('n', '?')}):", ""]
    lines += _per_class_lines(last["per_class"])
    return "\n".join(lines) + "\n"


def _weights_cell(row: dict) -> str:
    if row.get("not_fitted"):  # a baseline that could not be fitted: its reason stands in the last column
        return f"could not be fitted: {row['not_fitted']}"
    weights = row.get("layer_weights")
    if weights is None:
        return "-"
    cell = " ".join(f"{w:.2f}" for w in weights)
    gamma = row.get("gamma")
    return cell if gamma is None else f"{cell} (γ {gamma:.2f})"


_TABLE_KEYS = (("accuracy", "accuracy"), ("f1_macro", "macro-F1"), ("f1_weighted", "weighted-F1"))


def _cell(r: dict, key: str, width: int) -> str:
    """'0.8671', or '0.8671 ± 0.0123' when the row is a mean over seeds (it has `<key>_std`)."""
    std = r.get(f"{key}_std")
    if std is None:
        return _fmt(r.get(key), width)
    return f"{r[key]:.4f} ± {std:.4f}".rjust(width)


def _delta(r: dict, ref: dict | None, key: str) -> str:
    """A row's difference to the no_elmo row on `key` ('+0.0123'), '' for no_elmo itself."""
    if ref is None or r is ref or r.get(key) is None or ref.get(key) is None:
        return ""
    return f"{r[key] - ref[key]:+.4f}"


def comparison_table(rows: list[dict], note: str = "", keys: tuple = _TABLE_KEYS) -> str:
    """A fixed-width table of variants: one column per (key, title) of `keys` (mean ± std over seeds
    where a row has them), each row's difference to the `no_elmo` row on the first key when there is
    one (what ELMo adds), and the learned layer mix; `note` is a last line (the training options)."""
    ref = next((r for r in rows if r["variant"] == "no_elmo"), None)
    first, first_title = keys[0]
    variant_w = max([len("variant")] + [len(str(r["variant"])) for r in rows])
    widths = {key: max(len(title), *(len(_cell(r, key, 0)) for r in rows)) for key, title in keys}
    delta_title = "vs no_elmo"
    delta_w = max(len(delta_title), *(len(_delta(r, ref, first)) for r in rows))
    head = f"{'variant':<{variant_w}}" + "".join(f"  {title:>{widths[key]}}" for key, title in keys)
    head += f"  {delta_title:>{delta_w}}" if ref is not None else ""
    head += "  layer weights"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"  {_cell(r, key, widths[key])}" for key, _ in keys)
        cells += f"  {_delta(r, ref, first):>{delta_w}}" if ref is not None else ""
        lines.append(f"{str(r['variant']):<{variant_w}}{cells}  {_weights_cell(r)}")
    if note:
        lines.append(note + (f"; the difference is in {first_title}" if ref is not None else ""))
    return "\n".join(lines) + "\n"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_confusion(confusion: list[list[int]], labels: list[str], path: str | Path, title: str = "") -> Path:
    """A PNG of the confusion matrix: counts in the cells, true labels down, predicted across."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (len(labels), len(labels)):
        n = len(labels)
        raise ValueError(f"confusion matrix is {cm.shape}, expected {n}x{n} for {n} labels")
    side = max(4.0, 1.0 + 0.8 * len(labels))  # room for the cell counts as the class count grows
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    try:
        disp = ConfusionMatrixDisplay(confusion_matrix=cm, display_labels=list(labels))
        disp.plot(ax=ax, values_format="d", cmap="Blues", colorbar=True, xticks_rotation=45)
        if title:
            ax.set_title(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _series(history: list[dict], key: str) -> tuple[list, list]:
    # an epoch may lack a value (no validation that epoch): skip it rather than plot a gap as zero
    pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    return [e for e, _ in pts], [v for _, v in pts]


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """A PNG with loss per epoch (left) and accuracy per epoch (right), train and valid on each."""
    if not history:
        raise ValueError("plot_curves needs at least one epoch of history")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    try:
        for ax, metric, name in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
            for split, style in (("train", "o-"), ("valid", "s--")):
                x, y = _series(history, f"{split}_{metric}")
                if x:
                    ax.plot(x, y, style, label=split)
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _full_proba(model: LogisticRegression, x, n_labels: int) -> np.ndarray:
    # classes never seen in training get probability 0, so the log-loss still covers every label
    proba = np.zeros((x.shape[0], n_labels))
    proba[:, model.classes_] = model.predict_proba(x)
    return proba


class BaselineNotFitted(Exception):
    """The TF-IDF baseline cannot be fitted on these training texts; the message is the short reason.
    Not a UserError: the texts may be fine for the biLM, so the run reports it and goes on."""


def _no_features_reason(vec: TfidfVectorizer, texts: list[str]) -> str | None:
    """Why `vec` found no features in `texts` (sklearn's ValueError wording is its own, and changes),
    or None when that is not why it failed."""
    df: Counter = Counter()
    analyze = vec.build_analyzer()
    for text in texts:
        df.update(set(analyze(text)))
    if not df:
        return "no training document has a word (TF-IDF's words are runs of 2+ letters or digits)"
    if max(df.values()) < vec.min_df:
        return f"no word occurs in {vec.min_df} or more training documents (min_df={vec.min_df})"
    return None


def _fit_features(vec: TfidfVectorizer, texts: list[str]):
    try:
        return vec.fit_transform(texts)
    except ValueError:
        reason = _no_features_reason(vec, texts)
        if reason is None:
            raise
        raise BaselineNotFitted(reason) from None


def tfidf_baseline(train_texts: list[str], train_labels: list[int], test_texts: list[str],
                   test_labels: list[int], labels: list[str], seed: int = 0) -> dict:
    """Word uni+bigram TF-IDF and logistic regression; `compute_metrics` on the test set, loss = log-loss.

    Raises `BaselineNotFitted` when the training texts give no TF-IDF features (emoticons only, or no
    word in `_BASELINE_MIN_DF` documents). min_df stays as it is: a baseline fitted with other settings
    than the ones reported would be a different baseline."""
    if len(set(train_labels)) < 2:
        raise ValueError("the TF-IDF baseline needs at least two classes in the training labels")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=_BASELINE_MIN_DF, sublinear_tf=True)
    x_train = _fit_features(vec, train_texts)
    x_test = vec.transform(test_texts)
    model = LogisticRegression(max_iter=1000, C=_BASELINE_C, random_state=seed)
    model.fit(x_train, np.asarray(train_labels))
    proba = _full_proba(model, x_test, len(labels))
    loss = log_loss(test_labels, proba, labels=list(range(len(labels))))
    pred = np.argmax(proba, axis=1)
    metrics = compute_metrics(test_labels, pred, labels, loss=loss)
    metrics["features"] = int(x_train.shape[1])
    return metrics
