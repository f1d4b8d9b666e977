"""Text faults users of other corpus tools have hit, each through the CLI: a --min-count that leaves
no words, UTF-16/32 files (what Windows PowerShell's `>` writes), line numbers after a skipped long
line, the 1 MiB line limit in bytes wherever the line is, and byte-order marks inside concatenated
files. Each test failed before its fix; the comments say how."""
from __future__ import annotations

import codecs
import gzip
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli, write_grammar_corpus

pytestmark = pytest.mark.slow(seconds=22)  # its serial seconds: conftest starts the slowest first

MIB = 1 << 20


def _one_error(proc) -> str:
    """The single `elmo-dist: error:` line of a failed command (exit 2, no traceback)."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("elmo-dist: error: "), proc.stderr
    return lines[0]


def _prepare(src: Path, out: Path, *extra: str, check: bool = True):
    return run_cli("prepare", str(src), "--out", str(out), *extra, check=check)


def _vocab(out: Path) -> list[str]:
    return (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# --- 1. a --min-count that removes every word (fastText #193, bilm-tf #75) -------------------------

def test_min_count_that_removes_every_word_is_refused(tmp_path):
    # before: exit 0, "vocab 3, OOV rate 100.00%", and pretraining on it reached a perplexity of 1.38
    corpus = write_grammar_corpus(tmp_path / "c.txt", 300)
    err = _one_error(_prepare(corpus, tmp_path / "out", "--min-count", "1000000", "--heldout-fraction", "0",
                     check=False))
    assert "c.txt" in err and "--min-count 1000000" in err and "'the'" in err, err
    most = int(re.search(r"occurs ([\d,]+) times", err).group(1).replace(",", ""))
    assert most == corpus.read_text().split().count("the")
    assert not (tmp_path / "out" / "manifest.json").exists()
    _prepare(corpus, tmp_path / "out", "--min-count", str(most), "--heldout-fraction", "0")  # the advice works
    assert _vocab(tmp_path / "out") == ["<S>", "</S>", "<UNK>", "the"]


def test_max_size_without_room_for_words_is_refused(tmp_path):
    corpus = write_grammar_corpus(tmp_path / "c.txt", 50)
    err = _one_error(_prepare(corpus, tmp_path / "out", "--max-size", "3", check=False))
    assert "--max-size 3" in err and not (tmp_path / "out" / "manifest.json").exists()


def _wordless_prepared_corpus(root: Path) -> Path:
    """What `prepare --min-count 1000000` wrote before it was refused: a vocabulary of the specials
    alone, and every word stored as a shard-local OOV id."""
    root.mkdir()
    (root / "vocab.txt").write_text("<S>\n</S>\n<UNK>\n")
    sentences = {"train": ["the cat sees the fish ."] * 400, "heldout": ["a dog eats the fish ."] * 20}
    splits = {}
    for split, lines in sentences.items():
        oov: dict[str, int] = {}
        ids = [i for line in lines for i in (0, *(3 + oov.setdefault(w, len(oov)) for w in line.split()), 1)]
        (root / split).mkdir()
        np.save(root / split / "shard-00000.npy", np.array(ids, dtype=np.int32))
        (root / split / "shard-00000.oov.txt").write_text("".join(w + "\n" for w in oov))
        splits[split] = {"sentences": len(lines), "shards": [{"file": f"{split}/shard-00000.npy",
                                                              "tokens": len(ids), "oov_types": len(oov)}]}
    manifest = {"format_version": 1, "complete": True, "vocab_size": 3, "splits": splits,
                "options": {"tokenizer": "whitespace", "lowercase": False, "min_count": 1000000}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_pretrain_refuses_a_prepared_corpus_without_words(tmp_path):
    # before: it trained on <UNK> targets alone and exited 0
    data = _wordless_prepared_corpus(tmp_path / "prepared")
    proc = run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={data}",
                   f"train.run_dir={tmp_path / 'run'}", *TINY_OVERRIDES, "train.eval_every=0", "train.max_steps=3",
                   check=False)
    err = _one_error(proc)
    assert str(data / "vocab.txt") in err and "no words" in err and "--min-count" in err, err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_high_oov_rate_is_a_warning_in_stderr_and_the_manifest(tmp_path):
    # before: nothing said that 63% of the training words would be <UNK> to the softmax
    corpus = write_grammar_corpus(tmp_path / "c.txt", 300)
    proc = _prepare(corpus, tmp_path / "out", "--max-size", "6")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("elmo-dist: warning: ")]
    assert len(warnings) == 1 and "--max-size" in warnings[0], proc.stderr
    m = _manifest(tmp_path / "out")
    assert m["train_oov_rate"] > 0.05 and m["warnings"] == [warnings[0].removeprefix("elmo-dist: warning: ")]
    assert f"{m['train_oov_rate']:.2%}" in warnings[0]
    quiet = _prepare(corpus, tmp_path / "out2")  # every word in the vocabulary: no warning
    assert "warning" not in quiet.stderr and _manifest(tmp_path / "out2")["warnings"] == []


# --- 2. UTF-16 and UTF-32 input --------------------------------------------------------------------

TEXT = "the cat sees the fish .\na dog eats some bread .\n"
WIDE = {"UTF-16 LE": (codecs.BOM_UTF16_LE, "utf-16-le"), "UTF-16 BE": (codecs.BOM_UTF16_BE, "utf-16-be"),
        "UTF-32 LE": (codecs.BOM_UTF32_LE, "utf-32-le"), "UTF-32 BE": (codecs.BOM_UTF32_BE, "utf-32-be")}


def _command(err: str) -> str:
    return re.search(r"`([^`]*)`", err).group(1)


@pytest.mark.parametrize("name", list(WIDE))
def test_prepare_names_a_wide_encoding_and_its_conversion_works(tmp_path, name):
    # before: "contains NUL bytes; this looks like a binary file" (UTF-32 LE's mark starts with UTF-16 LE's)
    bom, codec = WIDE[name]
    src = tmp_path / "win.txt"
    src.write_bytes(bom + TEXT.encode(codec))
    err = _one_error(_prepare(src, tmp_path / "out", check=False))
    assert str(src) in err and f"the file is {name} text" in err and "iconv -f latin1" not in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()
    if shutil.which("iconv"):  # following the advice gives the text
        subprocess.run(_command(err), shell=True, check=True)
        converted = tmp_path / "win.utf8.txt"
        _prepare(converted, tmp_path / "out", "--heldout-fraction", "0")
        assert sorted(_vocab(tmp_path / "out")[3:]) == sorted(set(TEXT.split()))


def test_prepare_gzip_of_utf16_gets_a_gzip_conversion(tmp_path):
    src = tmp_path / "win.txt.gz"
    src.write_bytes(gzip.compress(codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le")))
    err = _one_error(_prepare(src, tmp_path / "out", check=False))
    assert "UTF-16 LE" in err and f"gzip -dc {shlex.quote(str(src))} | iconv -f UTF-16 -t UTF-8" in err, err


def _embed(tmp_path: Path, bilm: Path, src: Path, out: str = "out.h5"):
    return run_cli("embed", str(bilm), str(src), str(tmp_path / out), check=False)


def test_embed_names_utf16_and_never_advises_latin1(tmp_path, tiny_bilm):
    utf16 = codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le")
    (tmp_path / "win.txt").write_bytes(utf16)
    # before: "not valid UTF-8 (byte 0xff ...); ... `iconv -f latin1 -t utf-8`"
    err = _one_error(_embed(tmp_path, tiny_bilm, tmp_path / "win.txt"))
    assert "win.txt" in err and "UTF-16 LE" in err and "iconv -f UTF-16 -t UTF-8" in err, err
    assert "iconv -f latin1" not in err
    # following that old advice gave a file of NULs that embed took: exit 0, tokens like 'ÿþt\x00h\x00e\x00'
    (tmp_path / "converted.txt").write_bytes(utf16.decode("latin1").encode("utf-8"))
    err = _one_error(_embed(tmp_path, tiny_bilm, tmp_path / "converted.txt"))
    assert "converted.txt:1: contains NUL bytes" in err and "iconv -f latin1" not in err, err
    # UTF-16 without a byte-order mark is "valid UTF-8" full of NULs: embed took it too
    (tmp_path / "nobom.txt").write_bytes(TEXT.encode("utf-16-le") * 20)
    err = _one_error(_embed(tmp_path, tiny_bilm, tmp_path / "nobom.txt"))
    assert "nobom.txt:1:" in err and "UTF-16LE" in err, err
    assert not any(tmp_path.glob("*.h5"))


def test_latin1_advice_only_where_it_gives_text(tmp_path, tiny_bilm):
    (tmp_path / "cafe.txt").write_bytes(b"the cat sees the fish .\ncaf\xe9 au lait .\n")
    err = _one_error(_embed(tmp_path, tiny_bilm, tmp_path / "cafe.txt"))
    assert "cafe.txt:2: not valid UTF-8" in err and "iconv -f latin1" in err, err
    # before: the same advice for a file whose NUL bytes come in a later block than its first bad byte
    (tmp_path / "mixed.txt").write_bytes(b"caf\xe9\n" + b"the cat .\n" * (MIB // 5) + b"t\x00h\x00e\x00\n")
    err = _one_error(_embed(tmp_path, tiny_bilm, tmp_path / "mixed.txt"))
    assert "mixed.txt:1: not valid UTF-8" in err and "NUL bytes" in err and "iconv -f latin1" not in err, err


# --- 3. line numbers after a skipped long line (GloVe #34) ----------------------------------------

def test_nul_after_a_skipped_long_line_names_its_own_line(tmp_path):
    # lines 1-2 short, 3 is 3 MiB (skipped), 4-6 are 600 kB, and line 7 has a NUL, past the next 2 MiB block
    lines = [b"the cat", b"a dog", b"x" * (3 * MIB), *[b"y" * 600_000] * 3, b"bad\x00line", b"the end"]
    (tmp_path / "c.txt").write_bytes(b"\n".join(lines) + b"\n")
    err = _one_error(_prepare(tmp_path / "c.txt", tmp_path / "out", check=False))
    assert f"{tmp_path / 'c.txt'}:7: contains NUL bytes" in err, err  # before: line 6


# --- 4. the 1 MiB line limit, in bytes wherever the line is (sentencepiece #502, #214) -------------

CJK = "漢" * 600_000  # 600k characters, 1.8 MB of UTF-8


@pytest.mark.parametrize("offset", [0, 660_000], ids=["at the start", "0.66 MB in"])
def test_long_cjk_line_is_skipped_wherever_it_is(tmp_path, offset):
    # before: kept at the start of the file (its 600k characters counted), skipped further on (bytes)
    before = "the cat sees the fish .\n" * (offset // 24)
    (tmp_path / "c.txt").write_text(before + CJK + "\n" + "a dog eats some bread .\n" * 100, encoding="utf-8")
    proc = _prepare(tmp_path / "c.txt", tmp_path / "out")
    assert "1 lines over 1 MiB" in proc.stdout
    assert _manifest(tmp_path / "out")["long_lines_skipped"] == 1
    assert not any("漢" in w for w in _vocab(tmp_path / "out"))


def test_only_long_lines_says_why_there_are_no_tokens(tmp_path):
    (tmp_path / "c.txt").write_bytes((b"w " * (MIB // 2 + 10) + b"\n") * 3)
    err = _one_error(_prepare(tmp_path / "c.txt", tmp_path / "out", check=False))
    # before: only "the corpus has no tokens in its training part"
    assert "c.txt" in err and "all 3 lines were longer than 1 MiB and were skipped" in err, err


# --- 5. byte-order marks of concatenated files (lhotse #564) ---------------------------------------

PARTS = ["Hello world .\nthe cat sees the fish .\n", "World hello .\na dog eats some bread .\n"]


def _with_bom(text: str) -> bytes:
    return codecs.BOM_UTF8 + text.encode("utf-8")


@pytest.mark.parametrize("kind", ["gzip members", "text files"])
def test_prepare_drops_the_bom_of_every_concatenated_part(tmp_path, kind):
    # before: vocab.txt had '\ufeffWorld' (only the file's first byte-order mark was dropped)
    if kind == "gzip members":  # cat a.gz b.gz > c.gz
        (tmp_path / "c.txt.gz").write_bytes(b"".join(gzip.compress(_with_bom(p)) for p in PARTS))
        src = tmp_path / "c.txt.gz"
    else:  # cat a.txt b.txt > c.txt
        (tmp_path / "c.txt").write_bytes(b"".join(_with_bom(p) for p in PARTS))
        src = tmp_path / "c.txt"
    _prepare(src, tmp_path / "out", "--heldout-fraction", "0")
    vocab = _vocab(tmp_path / "out")
    assert "World" in vocab and not any("\ufeff" in w for w in vocab), vocab
    assert _manifest(tmp_path / "out")["byte_order_marks_dropped"] == 2


def test_embed_drops_the_bom_of_every_concatenated_part(tmp_path, tiny_bilm):
    (tmp_path / "c.txt").write_bytes(b"".join(_with_bom(p) for p in PARTS))
    run_cli("embed", str(tiny_bilm), str(tmp_path / "c.txt"), str(tmp_path / "out.h5"))
    with h5py.File(tmp_path / "out.h5") as f:
        index = json.loads(f["sentence_to_index"][()])
    # before: line 3 was '\ufeffWorld hello .', and its first word another one than 'World'
    assert index == {line: str(i) for i, line in enumerate("".join(PARTS).splitlines())}
