"""ELMo character ids, exactly as bilm-tf's UnicodeCharsVocabulary computes them."""
import numpy as np
import pytest

from elmo_dist.data.char_ids import (
    BOS_CHAR,
    BOW_CHAR,
    EOS_CHAR,
    EOW_CHAR,
    N_CHARS,
    PAD_CHAR,
    char_id_table,
    token_char_ids,
)


def expected(body, max_chars=50):
    """[258, body..., 259, 260, 260, ...] of length max_chars, written out by hand."""
    row = [258] + list(body) + [259]
    return row + [260] * (max_chars - len(row))


def test_special_char_constants_match_bilm_tf():
    assert (BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR) == (256, 257, 258, 259, 260)
    assert N_CHARS == 261


def test_ascii_word_is_bow_bytes_eow_then_padding():
    ids = token_char_ids("hello")
    assert ids.shape == (50,)
    assert ids.dtype == np.int16
    assert ids.tolist() == expected([104, 101, 108, 108, 111])
    assert ids[:8].tolist() == [258, 104, 101, 108, 108, 111, 259, 260]
    assert (ids[7:] == 260).all()


def test_single_char_and_punctuation():
    assert token_char_ids("a").tolist() == expected([97])
    assert token_char_ids(".").tolist() == expected([46])
    assert token_char_ids("<UNK>").tolist() == expected(b"<UNK>")


def test_sentence_boundaries_are_single_pseudo_chars():
    assert token_char_ids("<S>").tolist() == [258, 256, 259] + [260] * 47
    assert token_char_ids("</S>").tolist() == [258, 257, 259] + [260] * 47


def test_boundary_look_alikes_are_spelled_out():
    # only the exact tokens are pseudo characters
    assert token_char_ids("<s>").tolist() == expected(b"<s>")
    assert token_char_ids("<S>x").tolist() == expected(b"<S>x")


def test_long_word_truncated_to_48_bytes_then_eow():
    word = "".join(chr(ord("a") + i % 26) for i in range(100))
    ids = token_char_ids(word)
    assert ids.shape == (50,)
    assert ids[0] == 258
    assert ids[1:49].tolist() == list(word.encode()[:48])
    assert ids[49] == 259
    assert 260 not in ids.tolist()


def test_word_of_exactly_48_and_49_bytes():
    w48 = "x" * 48
    assert token_char_ids(w48).tolist() == [258] + [120] * 48 + [259]
    # 49 bytes is one too many: the last one is dropped
    assert token_char_ids("x" * 47 + "yz").tolist() == [258] + [120] * 47 + [121] + [259]
    assert token_char_ids("x" * 47).tolist() == [258] + [120] * 47 + [259, 260]


@pytest.mark.parametrize("word, body", [
    ("café", [99, 97, 102, 0xC3, 0xA9]),
    ("日本", [0xE6, 0x97, 0xA5, 0xE6, 0x9C, 0xAC]),
    ("Ω", [0xCE, 0xA9]),
    ("😀", [0xF0, 0x9F, 0x98, 0x80]),
])
def test_non_ascii_is_utf8_bytes(word, body):
    assert token_char_ids(word).tolist() == expected(body)


def test_truncation_is_by_bytes_and_can_split_a_character():
    # 47 ASCII bytes + a 2-byte character: only its first byte fits
    word = "a" * 47 + "é"
    ids = token_char_ids(word)
    assert ids[1:48].tolist() == [97] * 47
    assert ids[48] == 0xC3
    assert ids[49] == 259


@pytest.mark.parametrize("max_chars", [5, 10, 20])
def test_other_max_chars(max_chars):
    ids = token_char_ids("hello", max_chars)
    assert ids.shape == (max_chars,)
    body = list(b"hello")[: max_chars - 2]
    assert ids.tolist() == [258] + body + [259] + [260] * (max_chars - 2 - len(body))
    assert token_char_ids("<S>", max_chars).tolist() == [258, 256, 259] + [260] * (max_chars - 3)


def test_max_chars_10_truncates_to_8_bytes():
    assert token_char_ids("abcdefghijkl", 10).tolist() == [258] + list(b"abcdefgh") + [259]


def test_char_id_table_stacks_rows_in_order():
    tokens = ["<S>", "</S>", "<UNK>", "the", "café"]
    table = char_id_table(tokens, 12)
    assert table.shape == (5, 12)
    assert table.dtype == np.int16
    for i, tok in enumerate(tokens):
        assert table[i].tolist() == token_char_ids(tok, 12).tolist()
    assert table[3].tolist() == expected(b"the", 12)
    assert char_id_table([], 50).shape == (0, 50)


def test_all_ids_in_embedding_range():
    table = char_id_table(["ÿþ", "\x00", "z" * 80, "<S>", "</S>"])
    assert table.min() >= 0 and table.max() < N_CHARS
    assert token_char_ids("\x00").tolist() == expected([0])
