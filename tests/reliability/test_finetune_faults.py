"""Faults users hit in `elmo-dist finetune` on real label sets and texts (scikit-learn #13001, #8626),
each through the CLI. Before the fixes every case trained all the variants and then died in the
TF-IDF baseline with a ValueError traceback, leaving no summary.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow(seconds=28)  # its serial seconds: conftest starts the slowest first

TINY = ["variants=[frozen]", "train.epochs=1", "train.device=cpu", "train.batch_size=16",
        "classifier.hidden_dim=64", "bilm.batch_size=64"]


def _finetune(t: Path, bilm: Path, train: Path, *extra: str):
    return run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={bilm}", f"data.train={train}",
                   f"train.run_dir={t / 'ft'}", f"bilm.cache_dir={t / 'cache'}", *TINY, *extra, check=False)


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return path


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return path


def _one_class_file(t: Path) -> tuple[Path, list[str], str]:
    train = _csv(t / "train.csv", [(f"the match ended {i} to nil", "sport") for i in range(30)])
    return train, [], f"{train}: every training document has label 'sport'; a classifier needs at least 2 classes"


def _one_class_given_test(t: Path) -> tuple[Path, list[str], str]:
    train = _jsonl(t / "train.jsonl", [(f"the match ended {i} to nil", "sport") for i in range(30)])
    test = _jsonl(t / "test.jsonl", [("a late goal won it", "sport")])
    return (train, [f"data.test={test}"],
            f"{train}: every training document has label 'sport'; a classifier needs at least 2 classes")


def _one_class_left_by_the_split(t: Path) -> tuple[Path, list[str], str]:
    # 3 of 22 documents stay for training; stratified, both 'tennis' ones go to the test set
    rows = [(f"a tennis final {i}", "tennis") for i in range(2)] + [(f"a football match {i}", "football")
                                                                    for i in range(20)]
    train = _csv(t / "train.csv", rows)
    return (train, ["data.test_fraction=0.8", "data.valid_fraction=0.1"],
            f"{train}: every training document has label 'football' once the test and validation sets are split "
            f"off (every example of 'tennis' went there: add examples or lower the fraction); "
            f"a classifier needs at least 2 classes")


@pytest.mark.parametrize("case", [_one_class_file, _one_class_given_test, _one_class_left_by_the_split],
                         ids=["csv", "jsonl-with-test-file", "split-off"])
def test_one_class_training_set_is_refused_before_any_training(tmp_path, tiny_bilm, case):
    train, extra, message = case(tmp_path)
    proc = _finetune(tmp_path, tiny_bilm, train, *extra)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"elmo-dist: error: {message}"]
    # refused before the layer cache is built and before any variant trains
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ft" / "frozen").exists()
    assert not (tmp_path / "ft" / "summary.json").exists()


def _emoticons(t: Path) -> tuple[Path, str]:
    happy, sad = [":-)", ":)", ";)", ":D"], [":(", ":-(", ";(", ":'("]
    rows = [(" ".join(happy[j % 4] for j in range(i, i + 3)), "happy") for i in range(20)]
    rows += [(" ".join(sad[j % 4] for j in range(i, i + 3)), "sad") for i in range(20)]
    return (_jsonl(t / "train.jsonl", rows),
            "no training document has a word (TF-IDF's words are runs of 2+ letters or digits)")


def _no_repeated_word(t: Path) -> tuple[Path, str]:
    # 40 part numbers, each its own words: min_df=2 prunes every term
    rows = [(f"part{i}a fits{i}b model{i}c", "bolt" if i % 2 else "nut") for i in range(40)]
    return _csv(t / "train.csv", rows), "no word occurs in 2 or more training documents (min_df=2)"


@pytest.mark.parametrize("case", [_emoticons, _no_repeated_word], ids=["emoticons-only", "no-repeated-word"])
def test_a_baseline_that_cannot_be_fitted_is_reported_and_the_run_finishes(tmp_path, tiny_bilm, case):
    train, reason = case(tmp_path)
    proc = _finetune(tmp_path, tiny_bilm, train)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"the TF-IDF baseline could not be fitted: {reason}" in warnings[0]
    run = tmp_path / "ft"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["baseline"] == {"fitted": False, "reason": reason}
    assert 0 <= summary["variants"]["frozen"]["test"]["accuracy"] <= 1
    table = (run / "comparison.txt").read_text()
    assert table in proc.stdout
    rows = {line.split()[0]: line for line in table.splitlines()[2:-1]}
    assert set(rows) == {"frozen", "tfidf+logreg"}
    assert rows["tfidf+logreg"].split()[1:4] == ["-", "-", "-"]
    assert rows["tfidf+logreg"].endswith(f"could not be fitted: {reason}")
