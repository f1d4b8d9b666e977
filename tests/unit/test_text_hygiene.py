"""Text input hygiene, reader by reader: only "\\n" ends a line, and a byte-order mark changes nothing.

`str.splitlines()` also splits on form feed (pdftotext's page break), vertical tab, \\x1c-\\x1e,
U+0085, U+2028 and U+2029: a file holding one of them got line numbers (and `embed`'s HDF5 keys,
which users join to their data) shifted from that line on. A UTF-8 byte-order mark (Windows
editors) became part of the first word. Each reader is given the same kind of file four ways
(with and without a BOM, LF and CRLF line ends) and must return the same thing every time, with
line numbers counting "\\n" only; a BOM is counted where the reader reports counts.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo_dist.data.reader as reader
from elmo_dist.classify.documents import BOM_DROPPED, read_examples
from elmo_dist.data.prepare import PrepareOptions, prepare
from elmo_dist.data.reader import TextLines
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.embedder import embed_file
from elmo_dist.errors import DataError

BOM = "\ufeff"
VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (bom, crlf)
VARIANT_IDS = ["plain", "bom", "crlf", "bom+crlf"]


def write(path: Path, text: str, bom: bool = False, crlf: bool = False) -> Path:
    """`text` (lines ended by "\\n") as UTF-8, optionally with a BOM and CRLF line ends."""
    text = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes(((BOM if bom else "") + text).encode("utf-8"))
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- the shared reader ---------------------------------------------------------------------------

@pytest.mark.parametrize("bom, crlf", VARIANTS, ids=VARIANT_IDS)
def test_text_lines_split_on_newline_only(tmp_path, bom, crlf):
    lines = ["one", "\f", "\ftwo", "a\u2028b", "c\x85d", "e\x0bf\x1cg\x1dh\x1ei\u2029j", "", "last"]
    text = TextLines(write(tmp_path / "t.txt", "\n".join(lines) + "\n", bom, crlf))
    assert list(text) == lines and text.bom == bom


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 20])
@pytest.mark.parametrize("keep_ends", [False, True])
def test_text_lines_across_block_boundaries(tmp_path, monkeypatch, block, keep_ends):
    monkeypatch.setattr(reader, "_TEXT_BLOCK", block)  # lines, "\r\n" and UTF-8 sequences cut by blocks
    lines = ["caf\u00e9 \u4e2d\u6587\r", "", "\f", "a\u2028b\x85c\r", "\r\r", "\U0001f600 end"] * 3
    p = write(tmp_path / "t.txt", "\n".join(lines), bom=True)
    want = [line + "\n" for line in lines[:-1]] + lines[-1:] if keep_ends else [
        line[:-1] if line.endswith("\r") else line for line in lines[:-1]] + lines[-1:]
    text = TextLines(p, keep_ends=keep_ends)
    assert list(text) == want and text.bom
    p.write_bytes(p.read_bytes() + b"\n\xff")
    assert error_of(list, TextLines(p)).startswith(f"{p}:{len(lines) + 1}: not valid UTF-8 (byte 0xff at byte 1)")


def test_text_lines_keeps_ends_when_asked_and_drops_every_bom(tmp_path):
    p = write(tmp_path / "t.txt", f"a\r\nb\n{BOM}c", bom=True)
    text = TextLines(p, keep_ends=True)
    # a BOM inside the file (`cat a.txt b.txt`, each with one) is no more text than the first one
    assert list(text) == ["a\r\n", "b\n", "c"] and text.bom
    assert list(TextLines(write(tmp_path / "e.txt", "", bom=True))) == []
    assert list(TextLines(write(tmp_path / "r.txt", "a\r\rb\r\n"))) == ["a\r\rb"]  # one "\r" goes with "\n"


def test_text_lines_errors_name_the_newline_counted_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(BOM.encode() + "x\fy\n\f\na\u2028b\nc\x85".encode() + b"\xe9d\n")
    msg = error_of(list, TextLines(p))
    assert msg.startswith(f"{p}:4: not valid UTF-8 (byte 0xe9 at byte 4)"), msg
    msg = error_of(list, TextLines(tmp_path / "nope.txt"))
    assert msg == f"{tmp_path / 'nope.txt'}: file not found"
    assert error_of(list, TextLines(write(tmp_path / "long.txt", "ok\n" + "x" * 50), max_line_bytes=40)) \
        .startswith(f"{tmp_path / 'long.txt'}:2: line longer than")


# --- embed ---------------------------------------------------------------------------------------

EMBED_LINES = ["the cat sees the fish .", "\f", "\fa dog eats some bread .", "the bird\u2028hears a book .",
               "my friend\x85likes the river .", "", "the old man\x0bpaints\u2029the house .", "a dog sees ."]
EMBED_KEYS = [0, 2, 3, 4, 6, 7]  # lines 1 (a page break alone) and 5 (empty) are skipped


def _embedded(path: Path):
    with h5py.File(path) as f:
        index = json.loads(f["sentence_to_index"][()])
        return index, {k: f[k][()] for k in f if k != "sentence_to_index"}


def test_embed_keys_are_newline_counted_line_numbers(tmp_path, tiny_bilm):
    text = "\n".join(EMBED_LINES) + "\n"
    results = {}
    for (bom, crlf), name in zip(VARIANTS, VARIANT_IDS):
        src = write(tmp_path / f"{name}.txt", text, bom, crlf)
        res = embed_file(tiny_bilm, src, tmp_path / f"{name}.h5", device="cpu")
        assert res["sentences"] == len(EMBED_KEYS) and res["skipped_empty"] == 2
        assert res.get("byte_order_marks_dropped", 0) == int(bom)
        results[name] = _embedded(tmp_path / f"{name}.h5")
    index, arrays = results["plain"]
    assert sorted(arrays, key=int) == [str(i) for i in EMBED_KEYS]
    # the key's line, without its "\r" or the BOM, maps to the key
    assert index == {EMBED_LINES[i]: str(i) for i in EMBED_KEYS}
    assert arrays["4"].shape[1] == 6  # "my friend\x85likes the river .": U+0085 separates two words
    for name, (other_index, other_arrays) in results.items():  # a BOM or CRLF changes nothing
        assert other_index == index, name
        assert other_arrays.keys() == arrays.keys(), name
        for k in arrays:
            np.testing.assert_array_equal(other_arrays[k], arrays[k], err_msg=f"{name} key {k}")


def test_embed_bad_utf8_names_the_newline_counted_line(tmp_path, tiny_bilm):
    src = tmp_path / "bad.txt"
    src.write_bytes(BOM.encode() + "a\fb\n\f\nc\u2028d\n".encode() + b"caf\xe9\n")
    msg = error_of(embed_file, tiny_bilm, src, tmp_path / "out.h5", device="cpu")
    assert msg.startswith(f"{src}:4: not valid UTF-8"), msg


# --- vocabulary ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bom, crlf", VARIANTS, ids=VARIANT_IDS)
def test_vocabulary_load_ignores_bom_and_crlf(tmp_path, bom, crlf):
    tokens = ["<S>", "</S>", "<UNK>", "the", "cat", "caf\u00e9"]
    v = Vocabulary.load(write(tmp_path / "vocab.txt", "\n".join(tokens) + "\n", bom, crlf))
    assert v.tokens == tokens  # a BOM used to give "expected '<S>' ..., got '\ufeff<S>'"


@pytest.mark.parametrize("bad", ["\f", "x\fy", "big\u2028cat", "big\x85cat", "a\u2029b", "\x1c"])
@pytest.mark.parametrize("bom, crlf", VARIANTS, ids=VARIANT_IDS)
def test_vocabulary_separator_is_a_bad_token_on_its_own_line(tmp_path, bad, bom, crlf):
    p = write(tmp_path / "vocab.txt", f"<S>\n</S>\n<UNK>\nthe\n{bad}\ncat\n", bom, crlf)
    msg = error_of(Vocabulary.load, p)
    assert msg.startswith(f"{p}:5: empty or whitespace-containing token"), msg


# --- prepare -------------------------------------------------------------------------------------

def _corpus(n: int) -> str:
    words = ["the", "cat", "dog", "sees", "a", "fish", "The", "caf\u00e9", "bread"]
    lines = []
    for i in range(n):
        sep = ["\f", "\u2028", "\x85", "\u2029", "\x0b", " "][i % 6]
        line = sep.join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 8))
        lines.append("\f" if i % 11 == 0 else ("\f" + line if i % 5 == 0 else line))
    return "\n".join(lines) + "\n"


def _prepared(out: Path):
    manifest = json.loads((out / "manifest.json").read_text())
    vocab = Vocabulary.load(out / "vocab.txt")
    shards = {split: [np.load(out / sh["file"]).tolist() for sh in info["shards"]]
              for split, info in manifest["splits"].items()}
    return manifest, vocab, shards


@pytest.mark.parametrize("block", [reader._BLOCK, 64], ids=["2MiB", "64B"])
def test_prepare_bom_and_separators_change_nothing(tmp_path, monkeypatch, block):
    monkeypatch.setattr(reader, "_BLOCK", block)  # 64 bytes: many blocks, the BOM only in the first
    text = _corpus(300)
    # the reference: no BOM, LF ends and a plain space for every separator inside a line
    clean = text
    for sep in ("\f", "\u2028", "\x85", "\u2029", "\x0b"):
        clean = clean.replace(sep, " ")
    write(tmp_path / "clean.txt", clean)
    write(tmp_path / "odd.txt", text, bom=True, crlf=True)
    (tmp_path / "odd.txt.gz").write_bytes(gzip.compress((tmp_path / "odd.txt").read_bytes()))
    write(tmp_path / "held.txt", "\f\nthe cat\u2028sees\n", bom=True)
    got = {}
    for name in ("clean.txt", "odd.txt", "odd.txt.gz"):
        out = tmp_path / f"out-{name}"
        prepare(PrepareOptions(inputs=[str(tmp_path / name)], out=str(out), shard_tokens=300, heldout_fraction=0.1))
        got[name] = _prepared(out)
    manifest, vocab, shards = got["clean.txt"]
    assert manifest["byte_order_marks_dropped"] == 0 and manifest["lines"] == 300
    for name in ("odd.txt", "odd.txt.gz"):
        m, v, s = got[name]
        assert m["byte_order_marks_dropped"] == 1, name
        assert not any(t.startswith(BOM) for t in v.tokens), name
        assert v.tokens == vocab.tokens and v.counts.tolist() == vocab.counts.tolist(), name
        assert s == shards, name
        for key in ("lines", "empty_lines_skipped", "lines_with_bad_utf8", "splits"):
            assert m[key] == manifest[key], (name, key)
    opts = PrepareOptions(inputs=[str(tmp_path / "odd.txt")], heldout_files=[str(tmp_path / "held.txt")],
                          out=str(tmp_path / "out-held"))
    assert prepare(opts)["byte_order_marks_dropped"] == 2  # counted per file, held-out files too


# --- classifier data -----------------------------------------------------------------------------

# per format: the file name, its text (lines end in "\n"), the expected (text, label, line) examples,
# and a bad line appended at the end with the message it must give
TABLE = ("text,label\nthe cat\fsees,a\n\f\n\"page\u2028break\",b\nnext\x85line,a\n\"two\nlines\",b\n"
         "vertical\x0btab\x1cfs\u2029ps,a\n")
TABLE_EXAMPLES = [("the cat sees", "a", 2), ("page break", "b", 4), ("next line", "a", 5),
                  ("two lines", "b", 6), ("vertical tab fs ps", "a", 8)]
CASES = {
    "csv": ("d.csv", TABLE, TABLE_EXAMPLES, "too,many,fields\n", "expected 2 fields, got 3"),
    "tsv": ("d.tsv", TABLE.replace(",", "\t"), TABLE_EXAMPLES, "too\tmany\tfields\n", "expected 2 fields, got 3"),
    "agnews": ("ag.csv", "\"3\",\"the cat\fsees\",\"page\u2028break\"\n\f\n\"1\",\"next\x85line\",\"two\nlines\"\n"
                         "\"2\",\"vertical\x0btab\",\"fs\x1cps\u2029end\"\n",
               [("the cat sees page break", "Business", 1), ("next line two lines", "World", 3),
                ("vertical tab fs ps end", "Sports", 5)], "\"9\",\"x\",\"y\"\n", "out of range"),
    # json.dumps escapes the form feed and vertical tab (raw, they are invalid JSON); the lone "\f"
    # lines are raw page breaks, blank lines to the reader
    "jsonl": ("d.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" if row else "\f\n" for row in [
                  {"text": "the cat\fsees", "label": "a"}, None, {"text": "page\u2028break", "label": "b"},
                  {"text": "next\x85line", "label": 1}, None, {"text": "vertical\x0btab\u2029ps", "label": "a"}]),
              [("the cat sees", "a", 1), ("page break", "b", 3), ("next line", "1", 4), ("vertical tab ps", "a", 6)],
              "not json\n", "invalid JSON"),
}


def _examples(path: Path, skipped: dict):
    return [(e.text, e.label, int(e.source.rsplit(":", 1)[1])) for e in read_examples(path, skipped=skipped)]


@pytest.mark.parametrize("fmt", CASES)
@pytest.mark.parametrize("bom, crlf", VARIANTS, ids=VARIANT_IDS)
def test_classify_lines_count_newlines_and_bom_changes_nothing(tmp_path, fmt, bom, crlf):
    name, text, expected, bad, why = CASES[fmt]
    skipped: dict = {}
    p = write(tmp_path / name, text, bom, crlf)
    assert _examples(p, skipped) == expected  # `auto` detects the format, AG News included
    assert skipped == ({BOM_DROPPED: 1} if bom else {})
    n = text.count("\n") + 1
    msg = error_of(read_examples, write(tmp_path / name, text + bad, bom, crlf))
    assert msg.startswith(f"{p}:{n}: ") and why in msg, msg


@pytest.mark.parametrize("fmt", CASES)
def test_classify_bad_utf8_names_the_newline_counted_line(tmp_path, fmt):
    name, text, _, _, _ = CASES[fmt]
    p = tmp_path / name
    p.write_bytes(BOM.encode() + text.encode() + b"caf\xe9\n")
    msg = error_of(read_examples, p, fmt)
    assert msg.startswith(f"{p}:{text.count(chr(10)) + 1}: not valid UTF-8 (byte 0xe9"), msg


FOLDER_DOCS = {"a": ["the cat\fsees\n\f\npage\u2028break\n", "next\x85line\n"], "b": ["vertical\x0btab\u2029ps"]}


@pytest.mark.parametrize("bom, crlf", VARIANTS, ids=VARIANT_IDS)
def test_folder_documents_bom_and_separators(tmp_path, bom, crlf):
    root = tmp_path / "docs"
    for label, docs in FOLDER_DOCS.items():
        (root / label).mkdir(parents=True)
        for i, doc in enumerate(docs):
            write(root / label / f"{i}.txt", doc, bom, crlf)
    skipped: dict = {}
    got = [(e.text, e.label, e.source) for e in read_examples(root, skipped=skipped)]
    assert got == [("the cat sees page break", "a", str(root / "a" / "0.txt")),
                   ("next line", "a", str(root / "a" / "1.txt")),
                   ("vertical tab ps", "b", str(root / "b" / "0.txt"))]
    assert skipped == ({BOM_DROPPED: 3} if bom else {})
    bad = root / "b" / "bad.txt"
    bad.write_bytes((BOM if bom else "").encode() + "x\fy\n\f\na\u2028b\n".encode() + b"\xa3 10\n")
    msg = error_of(read_examples, root)
    assert msg.startswith(f"{bad}:4: not valid UTF-8 (byte 0xa3"), msg
