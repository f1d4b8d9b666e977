"""`prepare` against a straightforward reference: read line by line, look every word up, cut a shard
after the sentence that fills it. The fast path (runs of lines, first-sight ids on disk, a numpy
remap) and the pruned path (the text read again) must both write exactly what the reference writes."""
from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from elmo_dist.data import prepare_work
from elmo_dist.data.prepare import PrepareOptions, heldout_mask, prepare
from elmo_dist.data.shards import WordIds
from elmo_dist.data.tokenize import build_tokenizer
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import DataError

from conftest import run_cli

SPECIAL_WORDS = ["<S>", "</S>", "<UNK>"]  # as literal words in the text, they mean the specials


def _write_corpus(path: Path, n_lines: int, seed: int, gz: bool = False) -> Path:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)] + ["caf\u00e9", "na\u00efve", "x" * 60, "The", "the", *SPECIAL_WORDS]
    lines = []
    for i in range(n_lines):
        line = " ".join(rng.choice(words[: rng.choice([20, 400, len(words)])]) for _ in range(rng.randint(0, 30)))
        line += f" once{seed}_{i}" if i % 7 == 0 else ""  # seen once: outside the vocabulary (OOV)
        lines.append(("  \t" + line + " \r") if i % 13 == 0 else ("   " if i % 50 == 0 else line))
    data = "\n".join(lines).encode().replace(b"w17 ", b"w17\xff ", 3)  # bad UTF-8, replaced
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _reference(paths, opts: PrepareOptions):
    """The vocabulary and {split: [(stream, oov words)]}, computed the obvious way."""
    tokenize = build_tokenizer(opts.tokenizer, opts.lowercase)
    sentences, n = {"train": [], "heldout": []}, 0
    for path in paths:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        for line in raw.split(b"\n"):
            line = line.decode("utf-8", errors="replace").strip()
            if line:
                n += 1
                held = ((n * 2654435761 + opts.seed * 40503) & 0xFFFFFFFF) < opts.heldout_fraction * 2**32
                if words := tokenize(line):
                    sentences["heldout" if held else "train"].append(words)
    vocab = Vocabulary.from_counts(Counter(w for s in sentences["train"] for w in s), opts.min_count, opts.max_size)
    shards = {}
    for split, ss in sentences.items():
        shards[split], stream, oov = [], [], {}
        for s in ss:
            for w in ["<S>", *s, "</S>"]:
                stream.append(vocab.index[w] if w in vocab.index else oov.setdefault(w, len(vocab) + len(oov)))
            if len(stream) >= opts.shard_tokens:
                shards[split].append((stream, list(oov)))
                stream, oov = [], {}
        if stream:
            shards[split].append((stream, list(oov)))
    return vocab, shards


def _written(out: Path):
    manifest = json.loads((out / "manifest.json").read_text())
    shards = {split: [(np.load(out / s["file"]).tolist(),
                       (out / s["file"]).with_suffix(".oov.txt").read_text(encoding="utf-8").splitlines())
                      for s in info["shards"]] for split, info in manifest["splits"].items()}
    return manifest, Vocabulary.load(out / "vocab.txt"), shards


def _in_parts(monkeypatch, task_bytes: int = 3000, segment_tokens: int = 500) -> None:
    """Cut the inputs into many tasks and segments, and start workers whatever the input's size: what
    a corpus of many gigabytes gets, on a test corpus."""
    monkeypatch.setattr(prepare_work, "TASK_BYTES", task_bytes)
    monkeypatch.setattr(prepare_work, "SEGMENT_TOKENS", segment_tokens)
    monkeypatch.setattr(prepare_work, "MIN_PARALLEL_BYTES", 0)


# max_size 60: most words are outside the vocabulary, many times each, in every order (their shard ids)
@pytest.mark.parametrize("tokenizer,lowercase,shard_tokens,max_size,workers", [
    ("whitespace", False, 700, 0, 1), ("whitespace", True, 10**6, 0, 1), ("moses", False, 900, 0, 1),
    ("whitespace", False, 700, 0, 2), ("moses", False, 900, 0, 3), ("whitespace", False, 700, 60, 2)])
def test_prepare_writes_what_the_line_by_line_reference_writes(tmp_path, monkeypatch, tokenizer, lowercase,
                                                               shard_tokens, max_size, workers):
    paths = [_write_corpus(tmp_path / "a.txt", 1500, 1), _write_corpus(tmp_path / "b.txt.gz", 400, 2, gz=True)]
    if workers > 1:
        _in_parts(monkeypatch)
    opts = PrepareOptions(inputs=[str(p) for p in paths], out=str(tmp_path / "out"), tokenizer=tokenizer,
                          lowercase=lowercase, min_count=2, heldout_fraction=0.1, shard_tokens=shard_tokens, seed=5,
                          max_size=max_size, workers=workers)
    assert prepare(opts)["tasks"] == (2 if workers == 1 else 34)  # a.txt in 3 kB parts
    manifest, vocab, shards = _written(tmp_path / "out")
    ref_vocab, ref_shards = _reference(paths, opts)
    assert vocab.tokens == ref_vocab.tokens
    assert shards == ref_shards
    assert manifest["vocab_counts_exact"] and manifest["pruned_types"] == 0
    assert manifest["splits"]["train"]["oov_words"] == sum(t >= len(vocab) for s, _ in shards["train"] for t in s) > 0
    if shard_tokens < 1000:
        assert len(shards["train"]) > 10  # shards really were cut, many times, inside runs of lines
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["heldout", "manifest.json", "train", "vocab.counts.npy", "vocab.txt"]  # no scratch left


def test_pruned_counts_write_the_same_shards_when_only_rare_words_go(tmp_path):
    # the frequent words come first and each of them many times; then 3,000 words seen once each:
    # pruning at 2,000 distinct words keeps every frequent word, so the vocabulary is unchanged
    rng = random.Random(0)
    frequent = [" ".join(rng.choice([f"f{i}" for i in range(300)]) for _ in range(20)) for _ in range(400)]
    singletons = [" ".join(f"s{i}_{j}" for j in range(10)) for i in range(300)]
    (tmp_path / "c.txt").write_text("\n".join(frequent + singletons + frequent[:50]) + "\n")
    outs = {}
    for max_types in (10**6, 2000):
        outs[max_types] = tmp_path / f"p{max_types}"
        prepare(PrepareOptions(inputs=[str(tmp_path / "c.txt")], out=str(outs[max_types]), min_count=2,
                               shard_tokens=1500, heldout_fraction=0.05, max_types=max_types))
    (m_full, v_full, s_full), (m_pruned, v_pruned, s_pruned) = _written(outs[10**6]), _written(outs[2000])
    assert m_pruned["pruned_types"] > 0 and not m_pruned["vocab_counts_exact"] and m_full["vocab_counts_exact"]
    assert v_pruned.tokens == v_full.tokens and len(v_full) == 303
    assert s_pruned == s_full and len(s_full["train"]) > 3


def test_pruning_keeps_the_most_frequent_words_even_when_counts_are_even():
    ids = WordIds()
    words = [f"w{i}" for i in range(100)]
    ids.count(ids.ids(words * 5 + words[:10]))  # w0..w9: 6 times, the rest 5 times each
    pruned, dropped = ids.pruned(30)
    assert pruned.words[:3] == ["<S>", "</S>", "<UNK>"]
    assert pruned.words[3:13] == words[:10] and len(pruned.words) == 33 and dropped == 70
    assert pruned.counts[3:13].tolist() == [6] * 10 and pruned.counts[13:33].tolist() == [5] * 20
    assert pruned["w0"] == 3 and pruned.ids(["w99"]).tolist() == [33]  # a dropped word is new again


def test_a_corpus_of_evenly_spread_words_keeps_a_vocabulary_when_pruned(tmp_path):
    # the old pruner doubled a count threshold until it fitted, which could drop every word
    (tmp_path / "c.txt").write_text("\n".join(" ".join(f"w{(i * 7 + j) % 500}" for j in range(10))
                                              for i in range(2000)) + "\n")
    m = prepare(PrepareOptions(inputs=[str(tmp_path / "c.txt")], out=str(tmp_path / "p"), max_types=200,
                               heldout_fraction=0.0))
    assert m["pruned_types"] > 0 and m["vocab_size"] >= 100 and m["splits"]["train"]["words"] == 20000


@pytest.mark.parametrize("first,seed", [(0, 0), (2**32 - 5, 3), (10**12, 2**40 + 7), (5, -4)])
def test_heldout_mask_is_the_line_number_hash(first, seed):
    n, fraction = 5000, 0.3
    expected = [((no * 2654435761 + seed * 40503) & 0xFFFFFFFF) < fraction * 2**32
                for no in range(first + 1, first + n + 1)]
    assert heldout_mask(first, n, fraction, seed).tolist() == expected
    assert 0.25 < np.mean(expected) < 0.35


def test_a_failed_prepare_leaves_no_scratch_files(tmp_path):
    good = _write_corpus(tmp_path / "good.txt", 200, 0)
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(gzip.compress(good.read_bytes())[:-40])
    with pytest.raises(DataError, match="cut.txt.gz"):
        prepare(PrepareOptions(inputs=[str(good), str(cut)], out=str(tmp_path / "p")))
    assert not list((tmp_path / "p").iterdir())


@pytest.mark.parametrize("key,value", [("shard_tokens", 0), ("max_types", 1)])
def test_sizes_out_of_range_are_refused(tmp_path, key, value):
    good = _write_corpus(tmp_path / "good.txt", 20, 0)
    flag = "--" + key.replace("_", "-")
    with pytest.raises(DataError, match=f"{flag} must be at least"):
        prepare(PrepareOptions(inputs=[str(good)], out=str(tmp_path / "p"), **{key: value}))


def _bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _without_timing(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("created", "seconds", "tokens_per_s", "options")}


@pytest.mark.parametrize("max_types,heldout_file", [(10**6, False), (500, False), (10**6, True)])
def test_any_number_of_workers_writes_the_same_bytes(tmp_path, monkeypatch, max_types, heldout_file):
    """Text (plain, cut into parts, and gzip), JSONL and Parquet inputs, counted in many tasks: every
    file but the manifest's timing is the same byte for byte, pruned counts (max_types=500) included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_corpus(tmp_path / "a.txt", 2500, 1)
    _write_corpus(tmp_path / "b.txt.gz", 600, 2, gz=True)
    docs = _write_corpus(tmp_path / "d.txt", 300, 3).read_text(errors="replace").split("\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": "\n".join(docs[i:i + 3])}) + "\n"
                                              for i in range(0, 300, 3)))
    pq.write_table(pa.table({"text": docs[::-1]}), tmp_path / "e.parquet", row_group_size=30)
    inputs = [str(tmp_path / n) for n in ("a.txt", "b.txt.gz", "c.jsonl", "e.parquet")]
    held = [inputs.pop(1)] if heldout_file else []
    _in_parts(monkeypatch, task_bytes=2000, segment_tokens=700)
    outs = {}
    for workers in (1, 2, 3):
        outs[workers] = prepare(PrepareOptions(inputs=inputs, heldout_files=held, out=str(tmp_path / f"w{workers}"),
                                               min_count=2, heldout_fraction=0.1, shard_tokens=1000,
                                               max_types=max_types, workers=workers))
    m = outs[1]
    assert m["tasks"] > 20 and len(m["splits"]["train"]["shards"]) > 20 and len(m["splits"]["heldout"]["shards"]) > 1
    assert m["pruned_types"] > 0 if max_types < 10**6 else m["vocab_counts_exact"]
    one = _bytes(tmp_path / "w1")
    for workers in (2, 3):
        assert _without_timing(outs[workers]) == _without_timing(m)
        many = _bytes(tmp_path / f"w{workers}")
        assert many.keys() == one.keys() and [k for k in one if one[k] != many[k]] == ["manifest.json"]


def test_submit_prepare_in_process_writes_what_prepare_writes(tmp_path):
    """`submit prepare` with slurm.cluster=debug runs its four stages here, one after another (the
    real Slurm array is in tests/slurm): the same files, and the same report."""
    paths = [str(_write_corpus(tmp_path / f"{n}.txt", 900, i)) for i, n in enumerate("abc")]
    flags = ["--shard-tokens", "800", "--min-count", "2", "--heldout-fraction", "0.1"]
    one = run_cli("prepare", *paths, "--out", str(tmp_path / "one"), "--workers", "1", *flags)
    sub = run_cli("submit", "prepare", *paths, "--out", str(tmp_path / "sub"), *flags, "--parts", "2",
                  "--slurm.cluster=debug", "--wait")
    assert "prepare count    job" in sub.stdout and "(array of 2)" in sub.stdout
    assert sub.stdout.splitlines()[-3:-1] == one.stdout.splitlines()[:2]  # "prepared ...", "skipped ..."
    a, b = _bytes(tmp_path / "one"), _bytes(tmp_path / "sub")
    assert [k for k in a if a[k] != b.get(k)] == ["manifest.json", "summary.json"]  # timings
