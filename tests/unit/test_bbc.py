"""The demo's BBC News split: deterministic, stratified 80/20 by article, train and test disjoint."""
from collections import Counter

from elmo_dist.data.bbc import article_lines, export_text, split_articles


def test_split_is_stratified_deterministic_and_disjoint():
    a, b = split_articles(), split_articles()
    assert a == b
    train, test = Counter(t for _, t in a["train"]), Counter(t for _, t in a["test"])
    assert sum(train.values()) + sum(test.values()) == 2225
    assert set(train) == set(test) == {"business", "entertainment", "politics", "sports", "tech"}
    for topic in train:
        assert abs(test[topic] / (train[topic] + test[topic]) - 0.2) < 0.005
    assert not {p for p, _ in a["train"]} & {p for p, _ in a["test"]}
    assert split_articles(seed=1)["test"] != a["test"]


def test_export_writes_one_paragraph_per_line(tmp_path):
    counts = export_text(tmp_path)
    assert counts == {"train": 1781, "test": 444}
    first_test = split_articles()["test"][0][0]
    lines = article_lines(first_test)
    held = (tmp_path / "heldout.txt").read_text(encoding="utf-8").splitlines()
    assert held[: len(lines)] == lines and all(line.strip() for line in held)
