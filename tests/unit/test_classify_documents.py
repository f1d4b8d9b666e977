"""Classification data: every format parses, `auto` picks the right one, bad input names file:line, splits are sound."""
from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from elmo_dist.classify.documents import (
    AGNEWS_LABELS,
    FORMATS,
    Example,
    build_splits,
    detect_format,
    label_index,
    read_examples,
)
from elmo_dist.errors import DataError

AGNEWS = (
    '"3","Wall St. Bears Claw Back (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling\\\\band '
    'of ultra-cynics, are seeing green again."\n'
    '"1","Talks, again","Diplomats met on Monday.\\\\They said ""progress"" was made."\n'
    '"2","Cup final","A late goal,\nthen a red card."\n'
    '"4","New chip","Faster, cooler."\n'
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def make_tree(root: Path, docs: dict[str, list[str]]) -> Path:
    for label, texts in docs.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            write(root / label / f"{i:03d}.txt", text)
    return root


def balanced_csv(path: Path, counts: dict[str, int]) -> Path:
    rows = ["text,label"] + [f"doc {label} {i},{label}" for label, n in counts.items() for i in range(n)]
    return write(path, "\n".join(rows) + "\n")


@contextmanager
def raises_at(where: str, *fragments: str):
    """A DataError whose message starts with `where:` and holds every fragment."""
    with pytest.raises(DataError) as info:
        yield info
    msg = str(info.value)
    assert msg.startswith(f"{where}:"), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


# --- formats -------------------------------------------------------------------------------------

def test_agnews_quoted_commas_backslashes_and_multiline_fields(tmp_path):
    p = write(tmp_path / "train.csv", AGNEWS)
    ex = read_examples(p, "agnews")
    assert [e.label for e in ex] == ["Business", "World", "Sports", "Sci/Tech"]
    assert ex[0].text == ("Wall St. Bears Claw Back (Reuters) Reuters - Short-sellers, Wall Street's dwindling "
                          "band of ultra-cynics, are seeing green again.")
    assert ex[1].text == 'Talks, again Diplomats met on Monday. They said "progress" was made.'
    assert ex[2].text == "Cup final A late goal, then a red card."
    # the third record starts on line 3 and runs on to line 4, so the fourth starts on line 5
    assert [e.source for e in ex] == [f"{p}:1", f"{p}:2", f"{p}:3", f"{p}:5"]


def test_csv_with_header_and_two_text_fields(tmp_path):
    p = write(tmp_path / "reviews.csv", "id,title,body,sentiment\n1,Great,\"Loved it, really.\",pos\n"
                                        "2,Bad,\"Meh\n\nnever again\",neg\n3,Ok,Fine, pos\n")
    ex = read_examples(p, "csv", text_fields=["title", "body"], label_field="sentiment")
    assert [(e.text, e.label) for e in ex] == [
        ("Great Loved it, really.", "pos"), ("Bad Meh never again", "neg"), ("Ok Fine", "pos")]
    assert [e.source for e in ex] == [f"{p}:2", f"{p}:3", f"{p}:6"]


def test_tsv(tmp_path):
    p = write(tmp_path / "sst.tsv", "sentence\tlabel\na fine, funny film\t1\n\ndull\t0\n")
    ex = read_examples(p, "tsv", text_fields=["sentence"])
    assert [(e.text, e.label, e.source) for e in ex] == [
        ("a fine, funny film", "1", f"{p}:2"), ("dull", "0", f"{p}:4")]


def test_jsonl_skips_blank_lines_and_accepts_integer_labels(tmp_path):
    lines = [json.dumps({"text": "first  doc\n", "label": "a"}), "", "  ",
             json.dumps({"text": "second", "topic": 7, "label": 3}), json.dumps({"text": "third", "label": "a"})]
    p = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    ex = read_examples(p, "jsonl")
    assert ex == [Example("first doc", "a", f"{p}:1"), Example("second", "3", f"{p}:4"),
                  Example("third", "a", f"{p}:5")]


def test_folders_read_regular_visible_files_and_collapse_whitespace(tmp_path):
    root = make_tree(tmp_path / "bbc", {"tech": ["Chips get faster\n\nA new chip  was\tshown.\n"],
                                        "business": ["Shares up\n\nMarkets rose.", "Oil down\n"]})
    write(root / "README.TXT", "not a document")           # files at the top level are not documents
    write(root / "tech" / ".DS_Store", "hidden")
    (root / "tech" / "subdir").mkdir()
    (root / ".git").mkdir()
    write(root / ".git" / "x.txt", "hidden class")
    ex = read_examples(root, "folders")
    assert [(e.label, e.text) for e in ex] == [
        ("business", "Shares up Markets rose."), ("business", "Oil down"),
        ("tech", "Chips get faster A new chip was shown.")]
    assert ex[0].source == str(root / "business" / "000.txt")
    assert build_splits(str(root), test_fraction=0, valid_fraction=0).labels == ["business", "tech"]


def test_auto_detection(tmp_path):
    agnews = write(tmp_path / "ag.csv", AGNEWS)
    header = write(tmp_path / "h.csv", "label,title,text\n1,a,b\n")
    four = write(tmp_path / "four.csv", '1,"a","b","c"\n')
    assert detect_format(agnews) == "agnews"
    assert detect_format(header) == "csv"
    assert detect_format(four) == "csv"
    assert detect_format(write(tmp_path / "x.tsv", "")) == "tsv"
    assert detect_format(write(tmp_path / "x.jsonl", "")) == "jsonl"
    assert detect_format(write(tmp_path / "x.JSON", "")) == "jsonl"
    assert detect_format(make_tree(tmp_path / "tree", {"a": ["x"]})) == "folders"
    assert read_examples(agnews) == read_examples(agnews, "agnews")
    assert [e.label for e in read_examples(header)] == ["1"]
    with raises_at(str(tmp_path / "notes.txt"), "format"):
        read_examples(write(tmp_path / "notes.txt", "x"))
    assert FORMATS == ("auto", "agnews", "csv", "tsv", "jsonl", "folders")


def test_labels_order_and_index(tmp_path):
    ag = build_splits(str(write(tmp_path / "ag.csv", AGNEWS)), test_fraction=0, valid_fraction=0)
    assert ag.labels == list(AGNEWS_LABELS) == ["World", "Sports", "Business", "Sci/Tech"]
    assert label_index(ag.labels) == {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
    csv_ = build_splits(str(balanced_csv(tmp_path / "b.csv", {"zeta": 1, "alpha": 1, "mid": 1})),
                        test_fraction=0, valid_fraction=0)
    assert csv_.labels == ["alpha", "mid", "zeta"]
    with pytest.raises(DataError, match="twice"):
        label_index(["a", "b", "a"])


# --- bad input -----------------------------------------------------------------------------------

def test_wrong_field_count_names_line(tmp_path):
    ag = write(tmp_path / "ag.csv", '"1","t","d"\n"2","t"\n')
    with raises_at(f"{ag}:2", "expected 3 fields, got 2"):
        read_examples(ag, "agnews")
    c = write(tmp_path / "c.csv", "text,label\na,x\nb,y,extra\n")
    with raises_at(f"{c}:3", "expected 2 fields, got 3"):
        read_examples(c, "csv")
    t = write(tmp_path / "t.tsv", "text\tlabel\na\tx\nno tab here\n")
    with raises_at(f"{t}:3", "expected 2 fields, got 1"):
        read_examples(t, "tsv")


def test_unclosed_quote_points_at_the_row_it_opens(tmp_path):
    c = write(tmp_path / "c.csv", 'text,label\ngood,x\n"never closed,x\nmore,y\n')
    with raises_at(f"{c}:3", "unclosed quote"):
        read_examples(c, "csv")


@pytest.mark.parametrize("cls, why", [("five", "not an integer"), ("0", "out of range"), ("5", "out of range")])
def test_agnews_bad_class(tmp_path, cls, why):
    p = write(tmp_path / "ag.csv", f'"1","t","d"\n"2","t","d"\n"{cls}","t","d"\n')
    with raises_at(f"{p}:3", why):
        read_examples(p, "agnews")


def test_missing_column_names_it_and_the_available_ones(tmp_path):
    p = write(tmp_path / "c.csv", "title,body,label\na,b,c\n")
    with raises_at(f"{p}:1", "'text'", "'title', 'body', 'label'"):
        read_examples(p, "csv")
    with raises_at(f"{p}:1", "'topic'"):
        read_examples(p, "csv", text_fields=["title"], label_field="topic")


def test_bad_json_and_missing_field(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n')
    with raises_at(f"{p}:3", "invalid JSON"):
        read_examples(p, "jsonl")
    q = write(tmp_path / "e.jsonl", '{"text": "a", "label": "x"}\n{"body": "b", "label": "y"}\n')
    with raises_at(f"{q}:2", "'text'", "'body', 'label'"):
        read_examples(q, "jsonl")
    r = write(tmp_path / "f.jsonl", '["a", "x"]\n')
    with raises_at(f"{r}:1", "JSON object"):
        read_examples(r, "jsonl")


@pytest.mark.parametrize("fmt, name, head", [
    ("csv", "c.csv", b"text,label\nok,a\n"), ("tsv", "t.tsv", b"text\tlabel\nok\ta\n"),
    ("agnews", "ag.csv", b'"1","ok","fine"\n"2","ok","fine"\n'),
    ("jsonl", "d.jsonl", b'{"text": "ok", "label": "a"}\n\n')])
def test_non_utf8_names_the_line(tmp_path, fmt, name, head):
    tail = {"csv": b"caf\xe9,a\n", "tsv": b"caf\xe9\ta\n", "agnews": b'"3","caf\xe9","d"\n',
            "jsonl": b'{"text": "caf\xe9", "label": "a"}\n'}[fmt]
    p = tmp_path / name
    p.write_bytes(head + tail)
    with raises_at(f"{p}:3", "UTF-8", "0xe9"):
        read_examples(p, fmt)


def test_non_utf8_in_a_folder_names_the_file(tmp_path):
    root = make_tree(tmp_path / "docs", {"a": ["fine"], "b": ["fine too"]})
    bad = root / "b" / "latin1.txt"
    bad.write_bytes(b"price \xa310")
    with raises_at(str(bad), "UTF-8", "0xa3"):
        read_examples(root)


def test_utf8_bom_is_not_text(tmp_path):
    p = tmp_path / "c.csv"
    p.write_bytes("\ufefftext,label\nhello,a\n".encode("utf-8"))
    assert [(e.text, e.label) for e in read_examples(p, "csv")] == [("hello", "a")]


def test_empty_text_is_counted_not_an_error(tmp_path):
    p = write(tmp_path / "c.csv", "title,body,label\na,b,x\n,  ,y\n\" \n\",,x\nc,,y\n")
    skipped: dict = {}
    ex = read_examples(p, "csv", text_fields=["title", "body"], skipped=skipped)
    assert [e.text for e in ex] == ["a b", "c"] and skipped == {"empty_text": 2}
    j = write(tmp_path / "d.jsonl",
              '{"text": "", "label": "a"}\n{"text": null, "label": "a"}\n{"text": "x", "label": "a"}\n')
    assert len(read_examples(j, "jsonl", skipped=skipped)) == 1 and skipped == {"empty_text": 4}
    ag = write(tmp_path / "ag.csv", '"1","",""\n"2","t","\\\\"\n')
    assert [e.text for e in read_examples(ag, "agnews", skipped=skipped)] == ["t"] and skipped["empty_text"] == 5
    test = write(tmp_path / "test.csv", "title,body,label\n,,x\nd,e,y\n")
    split = build_splits(str(p), test=str(test), text_fields=["title", "body"], valid_fraction=0)
    assert split.skipped == {"empty_text": 3} and [e.text for e in split.test] == ["d e"]


def test_missing_paths_and_files_without_examples(tmp_path):
    with raises_at(str(tmp_path / "nope.csv"), "not found"):
        read_examples(tmp_path / "nope.csv")
    with raises_at(str(tmp_path / "nodir"), "not found"):
        read_examples(tmp_path / "nodir", "folders")
    header_only = write(tmp_path / "h.csv", "text,label\n")
    with raises_at(str(header_only), "no examples"):
        read_examples(header_only, "csv")
    all_empty = write(tmp_path / "e.jsonl", '{"text": " ", "label": "a"}\n')
    with raises_at(str(all_empty), "no examples", "1 with empty text"):
        read_examples(all_empty)
    with raises_at(str(write(tmp_path / "z.csv", "")), "empty"):
        read_examples(tmp_path / "z.csv", "csv")
    (tmp_path / "empty_tree").mkdir()
    with raises_at(str(tmp_path / "empty_tree"), "no examples"):
        read_examples(tmp_path / "empty_tree")
    with raises_at(str(header_only), "directory"):
        read_examples(header_only, "folders")
    with pytest.raises(DataError, match="unknown data format"):
        read_examples(header_only, "xml")
    with raises_at(str(tmp_path / "nope.csv"), "not found"):
        build_splits(str(tmp_path / "nope.csv"))


def test_empty_label_is_an_error(tmp_path):
    p = write(tmp_path / "c.csv", "text,label\na,x\nb, \n")
    with raises_at(f"{p}:3", "label is empty"):
        read_examples(p, "csv")


# --- splits --------------------------------------------------------------------------------------

def test_stratified_split_is_deterministic_stratified_disjoint_and_complete(tmp_path):
    counts = {"a": 50, "b": 30, "c": 20}
    p = str(balanced_csv(tmp_path / "all.csv", counts))
    s1, s2 = build_splits(p, seed=3), build_splits(p, seed=3)
    assert s1 == s2
    parts = {name: Counter(e.label for e in getattr(s1, name)) for name in ("train", "valid", "test")}
    assert sum(parts["test"].values()) == 20 and sum(parts["valid"].values()) == 8
    for label, n in counts.items():
        assert parts["test"][label] == round(n * 0.2)
        assert abs(parts["valid"][label] - n * 0.8 * 0.1) <= 1
        assert parts["train"][label] + parts["valid"][label] + parts["test"][label] == n
    sources = {name: [e.source for e in getattr(s1, name)] for name in ("train", "valid", "test")}
    assert not set(sources["train"]) & set(sources["valid"])
    assert not set(sources["train"]) & set(sources["test"])
    assert not set(sources["valid"]) & set(sources["test"])
    assert sorted(sum(sources.values(), [])) == sorted(e.source for e in read_examples(p))
    line = lambda src: int(src.rsplit(":", 1)[1])  # noqa: E731
    assert all(src == sorted(src, key=line) for src in sources.values())  # file order kept
    assert build_splits(p, seed=4).test != s1.test
    assert s1.labels == ["a", "b", "c"] and s1.skipped == {}


def test_given_valid_and_test_files_are_used_as_is(tmp_path):
    train = str(balanced_csv(tmp_path / "train.csv", {"a": 5, "b": 5}))
    valid = str(balanced_csv(tmp_path / "valid.csv", {"b": 1}))
    test = str(balanced_csv(tmp_path / "test.csv", {"a": 2, "b": 1}))
    s = build_splits(train, valid, test)
    assert s.train == read_examples(train) and s.valid == read_examples(valid) and s.test == read_examples(test)
    only_test = build_splits(train, test=test, valid_fraction=0.2)
    assert only_test.test == read_examples(test) and len(only_test.valid) == 2 and len(only_test.train) == 8
    only_valid = build_splits(train, valid=valid, test_fraction=0.2)
    assert only_valid.valid == read_examples(valid) and Counter(e.label for e in only_valid.test) == {"a": 1, "b": 1}


def test_label_unseen_in_training_names_first_such_example(tmp_path):
    train = str(balanced_csv(tmp_path / "train.csv", {"a": 3, "b": 3}))
    test = write(tmp_path / "test.csv", "text,label\nx,a\ny,zebra\nz,yak\n")
    with raises_at(f"{test}:3", "'zebra'", "never occurs in the training data"):
        build_splits(train, test=str(test))
    valid = write(tmp_path / "valid.jsonl", '{"text": "x", "label": "a"}\n{"text": "y", "label": "c"}\n')
    with raises_at(f"{valid}:2", "'c'"):
        build_splits(train, valid=str(valid), test=str(test))


def test_tiny_class_cannot_be_split(tmp_path):
    p = str(balanced_csv(tmp_path / "all.csv", {"a": 20, "b": 20, "rare": 1}))
    with pytest.raises(DataError, match="'rare'"):
        build_splits(p)
    # two examples pass the test split (one each side) but leave one for the valid split
    q = str(balanced_csv(tmp_path / "two.csv", {"a": 20, "b": 20, "pair": 2}))
    with pytest.raises(DataError, match="'pair'.*validation"):
        build_splits(q, test_fraction=0.5)
    assert len(build_splits(q, test_fraction=0.5, valid_fraction=0).test) == 21


def test_bad_fractions_and_too_few_examples(tmp_path):
    p = str(balanced_csv(tmp_path / "all.csv", {"a": 3, "b": 3, "c": 3}))
    with pytest.raises(DataError, match="test_fraction"):
        build_splits(p, test_fraction=1.0)
    with raises_at(p, "cannot split"):
        build_splits(p, test_fraction=0.1)   # one test example for three classes


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_compressed_task_files_read_as_the_plain_ones(tmp_path, suffix):
    """A gzip or zstd task file reads to the examples of the plain file, `auto` seeing through the
    suffix (AG News is told by its first row, read decompressed), and lines numbered as in it."""
    import gzip

    import zstandard

    pack = gzip.compress if suffix == ".gz" else zstandard.ZstdCompressor().compress
    jsonl = "".join(json.dumps({"text": f"doc {i}", "label": "ab"[i % 2]}) + "\n" for i in range(6))
    for name, text, fmt in (("train.csv", AGNEWS, "agnews"), ("train.jsonl", jsonl, "jsonl")):
        plain = write(tmp_path / name, text)
        packed = tmp_path / (name + suffix)
        packed.write_bytes(pack(text.encode()))
        assert detect_format(packed) == fmt
        got, want = read_examples(packed), read_examples(plain)
        assert [(e.text, e.label) for e in got] == [(e.text, e.label) for e in want] and len(want) >= 4
        assert [e.source.replace(suffix, "") for e in got] == [e.source for e in want]
    broken = tmp_path / ("cut.jsonl" + suffix)
    broken.write_bytes(pack(jsonl.encode())[:-6])
    with pytest.raises(DataError, match=f"cut.jsonl{suffix}: cannot read"):
        read_examples(broken)
