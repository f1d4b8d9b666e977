"""A character dictionary: char ids that are rows of a table over Unicode characters, the way
ELMoForManyLangs models read a word, instead of ELMo's 261 UTF-8 byte ids (char_ids.py).

    chars = CharDictionary.load("models/zh/chars.json")
    chars.table(["<S>", "今天", "</S>"], max_chars=50)    # int16 [3, 50]

`chars.json` (written by `elmo-dist import-elmo DIR OUT`) is a JSON list: entry i is id i, the six
special entries of SPECIALS by name first, then one character each. JSON rather than one entry per
line, so that any character survives (a U+FEFF or a line separator in a text file would not).

A token becomes [<bow>, one id per character (<oov> for one not in the dictionary), <eow>, <pad>,
...], max_chars ids in all; a token longer than max_chars - 2 characters is cut to that many
characters (code points, not bytes, unlike ELMo's ids). The sentence markers `<S>` and `</S>` are
[<bow>, <bos>, <eow>] and [<bow>, <eos>, <eow>].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from elmo_dist.data.char_ids import BOS_TOKEN, EOS_TOKEN
from elmo_dist.errors import DataError

CHARS_FILE = "chars.json"
SPECIALS = ("<bos>", "<eos>", "<bow>", "<eow>", "<oov>", "<pad>")
BOS, EOS, BOW, EOW, OOV, PAD = range(len(SPECIALS))


class CharDictionary:
    """Maps characters to ids; ids 0-5 are the specials (SPECIALS), the characters follow."""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars, len(SPECIALS))}

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @staticmethod
    def cut(token: str, max_chars: int) -> str:
        """The part of `token` that its ids hold: at most max_chars - 2 characters."""
        return token[: max_chars - 2]

    def token_ids(self, token: str, max_chars: int) -> np.ndarray:
        """The `max_chars` ids of one token, as int16."""
        out = np.full(max_chars, PAD, dtype=np.int16)
        if token in (BOS_TOKEN, EOS_TOKEN):
            body = [BOS if token == BOS_TOKEN else EOS]
        else:
            get = self.index.get
            body = [get(c, OOV) for c in self.cut(token, max_chars)]
        out[0] = BOW
        out[1 : 1 + len(body)] = body
        out[1 + len(body)] = EOW
        return out

    def table(self, tokens: list[str], max_chars: int) -> np.ndarray:
        """Ids for a list of tokens: int16 [len(tokens), max_chars]."""
        table = np.empty((len(tokens), max_chars), dtype=np.int16)
        for i, tok in enumerate(tokens):
            table[i] = self.token_ids(tok, max_chars)
        return table

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps([*SPECIALS, *self.chars]))

    @classmethod
    def load(cls, path: str | Path) -> "CharDictionary":
        """DataError naming the file for a missing file, bad JSON, specials out of place, an entry
        that is not one character, or a character listed twice."""
        path = Path(path)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: char dictionary not found") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a JSON char dictionary ({e})") from None
        if not isinstance(entries, list) or entries[: len(SPECIALS)] != list(SPECIALS):
            raise DataError(f"{path}: must be a JSON list that starts with {', '.join(SPECIALS)}")
        chars = entries[len(SPECIALS):]
        seen: set[str] = set()
        for i, c in enumerate(chars, len(SPECIALS)):
            if not isinstance(c, str) or len(c) != 1:
                raise DataError(f"{path}: entry {i} is {c!r}, not one character")
            if c in seen:
                raise DataError(f"{path}: entry {i} {c!r} is listed twice")
            seen.add(c)
        return cls(chars)
