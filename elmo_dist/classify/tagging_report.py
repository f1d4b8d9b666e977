"""Metrics, text reports, plots and a predictions file for sequence tagging.

    scheme = tag_scheme(gold)                                   # "BIO", "IOB1", "BIOES" or "none"
    m = tagging_metrics(gold, pred, scheme); print(format_tagging_report(m))
    write_conll_predictions("test.pred.conll", sentences, gold, pred)   # `conlleval < test.pred.conll`

Entity schemes (BIO, IOB1, BIOES) are scored by entities, as conlleval does: `seqeval` in its
default mode gives the micro precision/recall/F1 over entities and the per-type report. That mode
finds chunks by conlleval's rules (a chunk starts at B-, S-, or an I-/E- after O or another type),
so BIO and IOB1 data score the same way; the scheme only names the data. A tag set that is
anything else (POS tags, or BILOU's L-/U-) is "none": token accuracy, scikit-learn's per-tag
precision/recall/F1 and a confusion matrix. Token accuracy is reported for every scheme.

Tag order ("none"): by the tag's count in the gold tags, most frequent first, ties by name; tags
only ever predicted come last (by their predicted count, then name). The per-tag report and the
confusion matrix (true tags down, predicted across) both use it, so plots can show the top N.

Every number is converted to plain Python types (JSON-able). Plots use the Agg backend.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on training nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from seqeval.metrics import classification_report as entity_report  # noqa: E402
from seqeval.metrics import f1_score, precision_score, recall_score  # noqa: E402
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, classification_report, confusion_matrix  # noqa: E402

from elmo_dist.classify.report import _plain  # noqa: E402

ENTITY_SCHEMES = ("BIO", "IOB1", "BIOES")
SCHEMES = (*ENTITY_SCHEMES, "none")
_ENTITY_TAG = re.compile(r"[BIES]-.+")
_AVERAGES = ("accuracy", "micro avg", "macro avg", "weighted avg")
_DPI = 100
TOP_N = 20  # tags shown in a confusion plot; more make the cells unreadable


def _chunk_type(tag: str) -> str | None:
    return None if tag == "O" else tag[2:]


def tag_scheme(tags: list[list[str]]) -> str:
    """The tagging scheme of a tagged set. Entity schemes need every tag to be `O` or `B-/I-/E-/S-`
    plus a type, and at least one that is not `O`; then `BIOES` if any tag is `E-x` or `S-x`,
    `IOB1` if any chunk starts with `I-x` (at a sentence's start, after `O` or after another
    type: IOB1 opens chunks with I- and keeps B- for a chunk right after one of its own type), else
    `BIO` (IOB2). Everything else, POS tags and all-`O` sets included, is "none"."""
    flat = [t for sentence in tags for t in sentence]
    if not any(t != "O" for t in flat) or not all(t == "O" or _ENTITY_TAG.fullmatch(t) for t in flat):
        return "none"
    if any(t[0] in "ES" for t in flat if t != "O"):
        return "BIOES"
    for sentence in tags:
        prev = "O"
        for t in sentence:
            if t.startswith("I-") and _chunk_type(prev) != t[2:]:
                return "IOB1"
            prev = t
    return "BIO"


def _check_pairs(gold: list[list[str]], pred: list[list[str]]) -> int:
    """The token count; ValueError naming the first sentence whose lengths differ."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences and pred {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags and {len(p)} predicted")
    n = sum(len(g) for g in gold)
    if n == 0:
        raise ValueError("cannot compute metrics on no tokens")
    return n


def tag_order(gold: list[str], pred: list[str]) -> list[str]:
    """Gold tags by count (most first, ties by name), then tags only predicted (by count, then name)."""
    g, p = Counter(gold), Counter(pred)
    only_pred = set(p) - set(g)
    return sorted(g, key=lambda t: (-g[t], t)) + sorted(only_pred, key=lambda t: (-p[t], t))


def tagging_metrics(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict:
    """Entity-level micro P/R/F1 and per-type report (entity schemes) or per-tag report and confusion
    matrix ("none"), with token accuracy and counts, as plain Python types."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    n = _check_pairs(gold, pred)
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in pred for t in s]
    correct = sum(g == p for g, p in zip(flat_gold, flat_pred))
    out: dict = {"scheme": scheme, "n_sentences": len(gold), "n_tokens": n, "token_accuracy": correct / n}
    if scheme in ENTITY_SCHEMES:
        out.update(_entity_metrics(gold, pred))
    else:
        out.update(_tag_metrics(flat_gold, flat_pred))
    return _plain(out)


def _entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    # the counts behind the figures: seqeval's own chunking (sentences joined with an O between them)
    g, p = set(get_entities(gold)), set(get_entities(pred))
    kw = {"zero_division": 0}  # an empty side scores 0 rather than warn, as in classify/report.py
    return {
        "precision": precision_score(gold, pred, **kw), "recall": recall_score(gold, pred, **kw),
        "f1": f1_score(gold, pred, **kw),
        "gold_entities": len(g), "pred_entities": len(p), "correct_entities": len(g & p),
        "per_type": entity_report(gold, pred, output_dict=True, **kw),
    }


def _tag_metrics(gold: list[str], pred: list[str]) -> dict:
    labels = tag_order(gold, pred)
    report = classification_report(gold, pred, labels=labels, output_dict=True, zero_division=0)
    return {
        "labels": labels,
        "precision_macro": report["macro avg"]["precision"], "recall_macro": report["macro avg"]["recall"],
        "f1_macro": report["macro avg"]["f1-score"], "f1_weighted": report["weighted avg"]["f1-score"],
        "per_tag": report,
        "confusion_matrix": confusion_matrix(gold, pred, labels=labels),
    }


def _table(per: dict, first: str) -> list[str]:
    names = [k for k, v in per.items() if isinstance(v, dict) and k not in _AVERAGES]
    averages = [k for k in _AVERAGES[1:] if k in per]
    name_w = max(len(k) for k in (first, *names, *averages))
    lines = [f"{first:<{name_w}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>9}"]
    for k in [*names, "", *averages]:
        if not k:
            lines.append("")
            continue
        v = per[k]
        lines.append(f"{k:<{name_w}}  {v['precision']:>9.4f}  {v['recall']:>9.4f}  "
                     f"{v['f1-score']:>9.4f}  {int(v['support']):>9d}")
    return lines


def format_tagging_report(metrics: dict, title: str = "") -> str:
    """The headline figures, then a per-type (entity schemes) or per-tag table."""
    m = metrics
    lines = [title, "=" * len(title)] if title else []
    lines.append(f"scheme {m['scheme']}: {m['n_sentences']} sentences, {m['n_tokens']} tokens, "
                 f"token accuracy {m['token_accuracy']:.4f}")
    if m["scheme"] in ENTITY_SCHEMES:
        lines.append(f"entities (micro, conlleval): precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
                     f"F1 {m['f1']:.4f}  ({m['correct_entities']} correct of {m['gold_entities']} gold, "
                     f"{m['pred_entities']} predicted)")
        lines += ["", *_table(m["per_type"], "type")]
    else:
        lines.append(f"tags (macro): precision {m['precision_macro']:.4f}  recall {m['recall_macro']:.4f}  "
                     f"F1 {m['f1_macro']:.4f}  (weighted F1 {m['f1_weighted']:.4f}); tags by gold count")
        lines += ["", *_table(m["per_tag"], "tag")]
    return "\n".join(lines) + "\n"


def _top_n(cm: np.ndarray, labels: list[str], top_n: int) -> tuple[np.ndarray, list[str]]:
    """The `top_n` most frequent true tags (row sums), with every other tag summed into 'other'."""
    keep = sorted(int(i) for i in np.argsort(-cm.sum(axis=1), kind="stable")[:top_n])
    rest = sorted(set(range(len(labels))) - set(keep))
    groups = [[i] for i in keep] + [rest]
    small = np.array([[cm[np.ix_(r, c)].sum() for c in groups] for r in groups], dtype=np.int64)
    return small, [labels[i] for i in keep] + ["other"]


def plot_tag_confusion(confusion: list[list[int]], labels: list[str], path: str | Path,
                       title: str = "", top_n: int = TOP_N) -> Path:
    """A PNG of the tag confusion matrix (true down, predicted across). Past `top_n` tags it shows the
    `top_n` most frequent true tags and one 'other' row and column for the rest (its diagonal cell
    also holds the confusions among those other tags), and says so in the title."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (len(labels), len(labels)):
        k = len(labels)
        raise ValueError(f"confusion matrix is {cm.shape}, expected {k}x{k} for {k} labels")
    shown = list(labels)
    if len(labels) > top_n:
        cm, shown = _top_n(cm, shown, top_n)
        title = f"{title + ': ' if title else ''}top {top_n} of {len(labels)} tags, the rest as 'other'"
    side = max(4.0, 1.0 + 0.55 * len(shown))
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    try:
        disp = ConfusionMatrixDisplay(confusion_matrix=cm, display_labels=shown)
        disp.plot(ax=ax, values_format="d", cmap="Blues", colorbar=True, xticks_rotation=90,
                  text_kw={"fontsize": 7 if len(shown) > 10 else 10})
        if title:
            ax.set_title(title)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=_DPI)
        return path
    finally:
        plt.close(fig)


_SPACE = re.compile(r"\s+")


def write_conll_predictions(path: str | Path, sentences: list[list[str]], gold: list[list[str]],
                            pred: list[list[str]]) -> Path:
    """`token gold pred` a line (one space between, as conlleval reads), a blank line after each
    sentence. A token holding whitespace (CoNLL-U allows it) has each run of it replaced by `_`, and
    an empty token becomes `_`: the token is only shown, never scored. A tag holding whitespace
    cannot be written so that the columns stay right, and is a ValueError."""
    _check_pairs(gold, pred)
    if len(sentences) != len(gold) or any(len(s) != len(g) for s, g in zip(sentences, gold)):
        raise ValueError("sentences and tags differ in number or length")
    bad = next((t for s in (*gold, *pred) for t in s if not t or _SPACE.search(t)), None)
    if bad is not None:
        raise ValueError(f"tag {bad!r} is empty or holds whitespace: the columns would break")
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for tokens, g, p in zip(sentences, gold, pred):
            for tok, gt, pt in zip(tokens, g, p):
                f.write(f"{_SPACE.sub('_', tok) or '_'} {gt} {pt}\n")
            f.write("\n")
    return path
