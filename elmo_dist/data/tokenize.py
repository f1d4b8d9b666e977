"""Word tokenizers for `elmo-dist prepare` and the embedder.

- `whitespace`: the text is already tokenized (the 1B Word Benchmark is): split on whitespace.
- `moses`: raw text, tokenized with sacremoses' Moses tokenizer, the same tokenizer family that
  produced the 1B Word Benchmark, so raw text ends up in the same form the recipe expects.

`build_tokenizer` works a line at a time; `build_run_tokenizer` a run of lines at a time, which
is what lets `prepare` split a whole run of already-tokenized text with one `str.split` call.
"""
from __future__ import annotations

from typing import Callable

TOKENIZERS = ("whitespace", "moses")


def build_tokenizer(name: str, lowercase: bool = False) -> Callable[[str], list[str]]:
    """A function from one line to its words."""
    if name == "whitespace":
        split = str.split  # the C method itself: called once per line
    elif name == "moses":
        moses = _moses()

        def split(line: str) -> list[str]:
            # escape=False keeps `&` and quotes as themselves rather than HTML entities; the final
            # split drops any token made of exotic (e.g. no-break) whitespace
            return moses.tokenize(line, escape=False, return_str=True).split()
    else:
        raise ValueError(f"unknown tokenizer '{name}', expected one of {TOKENIZERS}")
    if lowercase:
        return lambda line: split(line.lower())
    return split


def _moses():
    """sacremoses' English Moses tokenizer; its `islower` with the same answer, faster.

    sacremoses 0.2.0 rebuilds a set of its 2,253 lowercase characters on every `islower` call, once
    per token that ends in a period: 60% of the tokenizer's time on news text (6 of 10 s for the
    demo's 2,225 BBC articles). The answer is unchanged: are all of the text's characters lowercase
    letters in Moses' own sense.
    """
    from sacremoses import MosesTokenizer

    class Tokenizer(MosesTokenizer):
        lowercase_chars = frozenset(MosesTokenizer.IsLower)

        def islower(self, text: str) -> bool:
            return not set(text).difference(self.lowercase_chars)

    return Tokenizer(lang="en")


def build_run_tokenizer(name: str, lowercase: bool = False) -> Callable[[list[str]], tuple[list[str], list | None]]:
    """A function from a run of non-empty lines to (the same lines tokenized, which were kept):
    each line's words are what `str.split()` gives on it, and lines left without words are dropped;
    `kept` is one bool a line of the run, or None when every line was kept."""
    if name == "whitespace":
        # already tokenized: the lines pass through and str.split() on them later is the tokenizer
        # (lowercasing never turns a non-space character into a space, so no line empties)
        return (lambda lines: (list(map(str.lower, lines)), None)) if lowercase else (lambda lines: (lines, None))
    split = build_tokenizer(name, lowercase)

    def tokenize(lines: list[str]) -> tuple[list[str], list | None]:
        words = list(map(split, lines))
        out = [" ".join(w) for w in words if w]
        return out, (None if len(out) == len(lines) else [bool(w) for w in words])

    return tokenize
