"""Vocabulary: order, min_count/max_size, bilm-tf's one-token-per-line file and its errors."""
import numpy as np
import pytest

from elmo_dist.data.vocab import BOS_ID, EOS_ID, UNK_ID, Vocabulary
from elmo_dist.errors import DataError

COUNTS = {"the": 10, "cat": 3, "dog": 3, "apple": 3, "zebra": 1, "a": 7, "mouse": 2}


def test_specials_first_then_descending_count_ties_alphabetical():
    v = Vocabulary.from_counts(COUNTS)
    assert v.tokens == ["<S>", "</S>", "<UNK>", "the", "a", "apple", "cat", "dog", "mouse", "zebra"]
    assert (BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2)
    assert v.counts.tolist() == [0, 0, 0, 10, 7, 3, 3, 3, 2, 1]
    assert len(v) == 10


def test_ids_and_unknown_words():
    v = Vocabulary.from_counts(COUNTS)
    assert v.id("<S>") == 0 and v.id("</S>") == 1 and v.id("<UNK>") == 2
    assert v.id("the") == 3
    assert v.id("unseen") == UNK_ID
    assert v.encode(["the", "cat", "nope", "zebra"]) == [3, 6, 2, 9]


def test_min_count():
    v = Vocabulary.from_counts(COUNTS, min_count=3)
    assert v.tokens == ["<S>", "</S>", "<UNK>", "the", "a", "apple", "cat", "dog"]
    assert v.id("mouse") == UNK_ID
    assert Vocabulary.from_counts(COUNTS, min_count=11).tokens == ["<S>", "</S>", "<UNK>"]


def test_max_size_counts_the_specials():
    v = Vocabulary.from_counts(COUNTS, max_size=6)
    assert v.tokens == ["<S>", "</S>", "<UNK>", "the", "a", "apple"]
    assert len(Vocabulary.from_counts(COUNTS, max_size=0)) == 10  # 0 = no limit
    both = Vocabulary.from_counts(COUNTS, min_count=2, max_size=8)
    assert both.tokens == ["<S>", "</S>", "<UNK>", "the", "a", "apple", "cat", "dog"]


def test_specials_in_counts_are_not_duplicated():
    v = Vocabulary.from_counts({"<S>": 50, "x": 2, "<UNK>": 9, "</S>": 50})
    assert v.tokens == ["<S>", "</S>", "<UNK>", "x"]


def test_save_is_one_token_per_line(tmp_path):
    v = Vocabulary.from_counts({"the": 5, "café": 2, "日本": 1})
    path = tmp_path / "vocab.txt"
    v.save(path)
    assert path.read_text(encoding="utf-8") == "<S>\n</S>\n<UNK>\nthe\ncafé\n日本\n"
    assert np.load(tmp_path / "vocab.counts.npy").tolist() == [0, 0, 0, 5, 2, 1]


def test_save_load_round_trip(tmp_path):
    v = Vocabulary.from_counts(COUNTS, min_count=2)
    v.save(tmp_path / "vocab.txt")
    w = Vocabulary.load(tmp_path / "vocab.txt")
    assert w.tokens == v.tokens
    assert w.index == v.index
    assert w.counts.tolist() == v.counts.tolist()
    assert w.char_ids(50).tolist() == v.char_ids(50).tolist()


def test_load_bilm_tf_file_without_counts(tmp_path):
    path = tmp_path / "vocab-2016-09-10.txt"
    path.write_text("<S>\n</S>\n<UNK>\nthe\n,\n.\n")
    v = Vocabulary.load(path)
    assert v.tokens == ["<S>", "</S>", "<UNK>", "the", ",", "."]
    assert v.counts is None
    assert v.id(",") == 4


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "nope.txt")


@pytest.mark.parametrize("text, line", [
    ("the\n<S>\n</S>\n<UNK>\n", 1),
    ("<S>\n<UNK>\n</S>\nthe\n", 2),
    ("<S>\n</S>\nthe\n", 3),
    ("<S>\n</S>\n", 3),  # file too short
])
def test_missing_or_misplaced_specials(tmp_path, text, line):
    path = tmp_path / "vocab.txt"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        Vocabulary.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}:")
    assert "\n" not in msg


def test_duplicate_entry_names_file_and_both_lines(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("<S>\n</S>\n<UNK>\nthe\ncat\ndog\ncat\n")
    with pytest.raises(DataError) as err:
        Vocabulary.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:7:")
    assert "'cat'" in msg
    assert "line 5" in msg


def test_duplicate_special_later_in_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("<S>\n</S>\n<UNK>\nthe\n<UNK>\n")
    with pytest.raises(DataError, match=r"vocab.txt:5: duplicate entry '<UNK>' \(first on line 3\)"):
        Vocabulary.load(path)


def test_blank_line_inside_file_is_an_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("<S>\n</S>\n<UNK>\nthe\n\ncat\n")
    with pytest.raises(DataError, match=r"vocab.txt:5:"):
        Vocabulary.load(path)


def test_counts_file_of_wrong_length(tmp_path):
    v = Vocabulary.from_counts(COUNTS)
    v.save(tmp_path / "vocab.txt")
    np.save(tmp_path / "vocab.counts.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match="3 counts for 10 vocabulary entries"):
        Vocabulary.load(tmp_path / "vocab.txt")


def test_char_ids_table_rows_follow_vocab_order():
    v = Vocabulary.from_counts({"ab": 2})
    table = v.char_ids(6)
    assert table.tolist() == [
        [258, 256, 259, 260, 260, 260],
        [258, 257, 259, 260, 260, 260],
        [258, 60, 85, 78, 75, 259],  # '<UNK>' truncated to 4 bytes
        [258, 97, 98, 259, 260, 260],
    ]
