"""ELMo's character ids (bilm-tf `UnicodeCharsVocabulary`), computed exactly.

A token becomes 50 ids: begin-of-word 258, its UTF-8 bytes (0-255, at most 48 of them),
end-of-word 259, then padding 260. `<S>` and `</S>` are single pseudo-characters 256 and 257.
Truncation is by bytes, as in bilm-tf, so a multi-byte character may be cut in half.
"""
from __future__ import annotations

import numpy as np

BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260
N_CHARS = 261  # ids 0..260; bilm-tf's inference Batcher shifts them by +1 (262), we never do
BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<S>", "</S>", "<UNK>"


def token_char_ids(token: str, max_chars: int = 50) -> np.ndarray:
    """The `max_chars` ELMo char ids of one token, as int16."""
    out = np.full(max_chars, PAD_CHAR, dtype=np.int16)
    if token == BOS_TOKEN:
        body = [BOS_CHAR]
    elif token == EOS_TOKEN:
        body = [EOS_CHAR]
    else:
        body = list(token.encode("utf-8", errors="replace")[: max_chars - 2])
    out[0] = BOW_CHAR
    out[1 : 1 + len(body)] = body
    out[1 + len(body)] = EOW_CHAR
    return out


def char_id_table(tokens: list[str], max_chars: int = 50) -> np.ndarray:
    """Char ids for a list of tokens: int16 array [len(tokens), max_chars]."""
    table = np.empty((len(tokens), max_chars), dtype=np.int16)
    for i, tok in enumerate(tokens):
        table[i] = token_char_ids(tok, max_chars)
    return table
