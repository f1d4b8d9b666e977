"""Word tokenizers for `elmo-dist prepare`.

- `whitespace`: the text is already tokenized (the 1B Word Benchmark is): split on whitespace.
- `moses`: raw text, tokenized with sacremoses' Moses tokenizer, the same tokenizer family that
  produced the 1B Word Benchmark, so raw text ends up in the same form the recipe expects.
"""
from __future__ import annotations

from typing import Callable

TOKENIZERS = ("whitespace", "moses")


def build_tokenizer(name: str, lowercase: bool = False) -> Callable[[str], list[str]]:
    if name == "whitespace":
        split = str.split  # the C method itself: prepare calls it once per line
    elif name == "moses":
        from sacremoses import MosesTokenizer

        moses = MosesTokenizer(lang="en")

        def split(line: str) -> list[str]:
            # escape=False keeps `&` and quotes as themselves rather than HTML entities; the final
            # split drops any token made of exotic (e.g. no-break) whitespace
            return moses.tokenize(line, escape=False, return_str=True).split()
    else:
        raise ValueError(f"unknown tokenizer '{name}', expected one of {TOKENIZERS}")
    if lowercase:
        return lambda line: split(line.lower())
    return split
