"""Tagging metrics (hand-worked figures and seqeval's), the scheme rule, the report, the plot, the predictions file."""
from __future__ import annotations

import json

import matplotlib.axes
import numpy as np
import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from elmo_dist.classify.conll import read_conll
from elmo_dist.classify.tagging_report import (
    _top_n,
    format_tagging_report,
    plot_tag_confusion,
    tag_order,
    tag_scheme,
    tagging_metrics,
    write_conll_predictions,
)


@pytest.mark.parametrize("tags, scheme", [
    ([["B-PER", "I-PER", "O"], ["B-LOC", "B-LOC", "I-LOC"]], "BIO"),
    ([["O", "I-PER", "I-PER"]], "IOB1"),                          # a chunk opened by I- after O
    ([["I-PER", "O"]], "IOB1"),                                   # ... at the start of a sentence
    ([["B-PER", "I-LOC"]], "IOB1"),                               # ... after another type
    ([["I-PER", "B-PER", "I-PER"]], "IOB1"),                      # IOB1's B-: a chunk right after one of its type
    ([["B-PER", "E-PER", "O"]], "BIOES"),
    ([["S-LOC", "O"]], "BIOES"),
    ([["DT", "NN", "VBZ"]], "none"),                              # POS tags
    ([["O", "O"], ["O"]], "none"),                                # no entity at all
    ([["B-PER", "NN"]], "none"),                                  # a tag outside the scheme
    ([["U-PER", "O"], ["B-LOC", "L-LOC"]], "none"),               # BILOU is not scored by entities
    ([["B-", "O"]], "none"),                                      # a prefix without a type
])
def test_tag_scheme(tags, scheme):
    assert tag_scheme(tags) == scheme


# Case 1, BIO. Gold entities: PER(s0 0-1), LOC(s0 3), ORG(s1 0) = 3. Predicted: PER(s0 0-1),
# ORG(s0 3), ORG(s1 0), LOC(s1 1) = 4. Correct: PER, ORG(s1 0) = 2. P = 2/4, R = 2/3,
# F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7. Tokens right: 3 of 4 and 1 of 2 = 4/6.
CASE_BIO = ([["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]],
            [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]], "BIO", (2, 3, 4), (1 / 2, 2 / 3, 4 / 7), 4 / 6)
# Case 2, boundaries: a chunk one token short scores nothing. Gold PER(0-2), LOC(4-5); predicted
# PER(0-1), LOC(4-5): 1 correct of 2 and 2: P = R = F1 = 1/2. Tokens right: 5 of 6.
CASE_SPAN = ([["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"]],
             [["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]], "BIO", (1, 2, 2), (1 / 2, 1 / 2, 1 / 2), 5 / 6)
# Case 3, IOB1: gold PER(0-1), PER(2) (B- splits two PERs), LOC(4) = 3; predicted PER(0-2), LOC(4) = 2;
# correct LOC only: P = 1/2, R = 1/3, F1 = (2 * 1/6)/(5/6) = 2/5. Tokens right: 4 of 5.
CASE_IOB1 = ([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]],
             [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]], "IOB1", (1, 3, 2), (1 / 2, 1 / 3, 2 / 5), 4 / 5)
# Case 4, BIOES in conlleval mode: a chunk closed by I- rather than E- is still the same chunk
# (2 of 2 right, F1 = 1) though a token's tag is wrong (3 of 4).
CASE_BIOES = ([["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "I-LOC"]], "BIOES",
              (2, 2, 2), (1.0, 1.0, 1.0), 3 / 4)


@pytest.mark.parametrize("gold, pred, scheme, counts, prf, accuracy", [CASE_BIO, CASE_SPAN, CASE_IOB1, CASE_BIOES])
def test_entity_metrics_are_the_hand_worked_fractions_and_seqevals(gold, pred, scheme, counts, prf, accuracy):
    assert tag_scheme(gold) == scheme
    m = tagging_metrics(gold, pred, scheme)
    assert (m["correct_entities"], m["gold_entities"], m["pred_entities"]) == counts
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(prf, rel=1e-12)
    assert m["f1"] == pytest.approx(f1_score(gold, pred), rel=1e-12)
    assert (m["precision"], m["recall"]) == pytest.approx((precision_score(gold, pred), recall_score(gold, pred)))
    assert m["token_accuracy"] == pytest.approx(accuracy, rel=1e-12)
    assert m["n_tokens"] == sum(map(len, gold)) and m["n_sentences"] == len(gold)
    assert json.loads(json.dumps(m)) == m                                       # plain Python types


def test_per_type_report_of_case_1():
    gold, pred, scheme, *_ = CASE_BIO
    per = tagging_metrics(gold, pred, scheme)["per_type"]
    # PER 1 of 1; LOC: 1 gold, 1 predicted elsewhere, none right; ORG: 1 right of 2 predicted, 1 gold
    assert {k: (v["precision"], v["recall"], v["support"]) for k, v in per.items() if k.isupper()} == \
        {"PER": (1.0, 1.0, 1), "LOC": (0.0, 0.0, 1), "ORG": (0.5, 1.0, 1)}
    assert per["ORG"]["f1-score"] == pytest.approx(2 / 3)
    assert per["micro avg"]["f1-score"] == pytest.approx(4 / 7)


# POS case: gold NN 3, VB 2, DT 1, and JJ only predicted: the order NN, VB, DT, JJ. Pairs (gold, pred):
# (DT,DT) (NN,VB) (VB,VB) | (NN,NN) (NN,DT) (VB,JJ): 3 of 6 right. NN: predicted once, right: P 1,
# R 1/3, F1 1/2; VB: predicted twice, 1 right of 2 gold: P = R = F1 = 1/2; DT: predicted twice, its one
# gold right: P 1/2, R 1, F1 2/3; JJ: 0. Macro F1 = (1/2 + 1/2 + 2/3 + 0) / 4.
GOLD_POS = [["DT", "NN", "VB"], ["NN", "NN", "VB"]]
PRED_POS = [["DT", "VB", "VB"], ["NN", "DT", "JJ"]]


def test_pos_metrics_order_tags_by_frequency_with_the_confusion_matrix():
    m = tagging_metrics(GOLD_POS, PRED_POS, "none")
    assert m["labels"] == ["NN", "VB", "DT", "JJ"]           # NN 3, then VB 2 ... DT 1, JJ only predicted
    assert m["confusion_matrix"] == [[1, 1, 1, 0],            # NN -> NN (s1 0), VB (s0 1), DT (s1 1)
                                     [0, 1, 0, 1],            # VB -> VB (s0 2), JJ (s1 2)
                                     [0, 0, 1, 0],            # DT -> DT
                                     [0, 0, 0, 0]]            # JJ never true
    assert m["token_accuracy"] == pytest.approx(3 / 6)
    per = m["per_tag"]
    assert (per["NN"]["precision"], per["NN"]["recall"]) == pytest.approx((1.0, 1 / 3))
    assert (per["DT"]["precision"], per["DT"]["recall"]) == pytest.approx((1 / 2, 1.0))
    assert (per["VB"]["precision"], per["VB"]["recall"], per["VB"]["support"]) == pytest.approx((1 / 2, 1 / 2, 2))
    assert per["JJ"]["support"] == 0 and per["JJ"]["precision"] == 0.0
    assert m["f1_macro"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3 + 0) / 4)
    assert json.loads(json.dumps(m)) == m
    assert tag_order(["b", "a", "a", "c"], ["z", "z", "y", "c"]) == ["a", "b", "c", "z", "y"]


def test_mismatched_sequences_and_unknown_scheme_are_refused():
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags and 1 predicted"):
        tagging_metrics([["O"], ["O", "O"]], [["O"], ["O"]], "BIO")
    with pytest.raises(ValueError, match="gold has 2 sentences and pred 1"):
        tagging_metrics([["O"], ["O"]], [["O"]], "BIO")
    with pytest.raises(ValueError, match="no tokens"):
        tagging_metrics([[]], [[]], "none")
    with pytest.raises(ValueError, match="unknown tagging scheme 'BILOU'"):
        tagging_metrics([["O"]], [["O"]], "BILOU")


def test_report_tables():
    gold, pred, scheme, *_ = CASE_BIO
    text = format_tagging_report(tagging_metrics(gold, pred, scheme), title="test")
    assert text.startswith("test\n====\nscheme BIO: 2 sentences, 6 tokens, token accuracy 0.6667\n")
    assert "precision 0.5000  recall 0.6667  F1 0.5714  (2 correct of 3 gold, 4 predicted)" in text
    org = next(line for line in text.splitlines() if line.startswith("ORG"))
    assert org.split() == ["ORG", "0.5000", "1.0000", "0.6667", "1"]
    pos = format_tagging_report(tagging_metrics(GOLD_POS, PRED_POS, "none"))
    rows = [line.split()[0] for line in pos.splitlines()[4:8]]
    assert rows == ["NN", "VB", "DT", "JJ"] and "accuracy" not in rows
    assert pos.splitlines()[3].split() == ["tag", "precision", "recall", "f1-score", "support"]


def test_plot_keeps_the_top_tags_and_says_so(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = [f"t{i}" for i in range(30)]
    cm = rng.integers(0, 5, size=(30, 30)) + np.diag(np.arange(30) * 1000)   # t29 the most frequent true tag
    small, shown = _top_n(cm, labels, 20)
    assert shown == [f"t{i}" for i in range(10, 30)] + ["other"]
    assert small.sum() == cm.sum() and small[0, 0] == cm[10, 10] and small[-1, -1] == cm[:10, :10].sum()
    assert small[0, -1] == cm[10, :10].sum()
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, *a, **k: titles.append(t))
    path = plot_tag_confusion(cm.tolist(), labels, tmp_path / "plots" / "cm.png", title="Brown test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles == ["Brown test: top 20 of 30 tags, the rest as 'other'"]
    plot_tag_confusion([[3, 1], [0, 2]], ["NN", "DT"], tmp_path / "small.png")
    assert titles[1:] == [] and (tmp_path / "small.png").stat().st_size > 0
    with pytest.raises(ValueError, match="expected 3x3"):
        plot_tag_confusion([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "x.png")


def test_predictions_file_is_conlleval_columns(tmp_path):
    sentences = [["New York", "is", "big"], ["Yes"]]
    gold, pred = [["B-LOC", "O", "O"], ["O"]], [["B-LOC", "O", "B-MISC"], ["B-PER"]]
    path = write_conll_predictions(tmp_path / "pred.conll", sentences, gold, pred)
    assert path.read_text(encoding="utf-8") == ("New_York B-LOC B-LOC\nis O O\nbig O B-MISC\n\n"
                                                "Yes O B-PER\n\n")
    assert read_conll(path, tag_column=1).tags == gold and read_conll(path).tags == pred
    with pytest.raises(ValueError, match="holds whitespace"):
        write_conll_predictions(tmp_path / "x", [["a"]], [["B-X Y"]], [["O"]])
    with pytest.raises(ValueError, match="differ in number or length"):
        write_conll_predictions(tmp_path / "x", [["a", "b"]], [["O"]], [["O"]])
