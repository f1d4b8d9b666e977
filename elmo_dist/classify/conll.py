"""Tagged sentences for sequence tagging: CoNLL column files and CoNLL-U treebanks.

    data = read_tagged("eng.train")                  # CoNLL-2003: token first, NER tag last
    data = read_tagged("en_ewt-ud-train.conllu")     # UPOS tags; read_conllu(path, tag="xpos") for XPOS
    data.sentences[0], data.tags[0]                  # ['EU', 'rejects', ...], ['B-ORG', 'O', ...]

CoNLL columns (`read_conll`): one token a line, a blank line between sentences. A line that holds a
tab is split on tabs (so a tab-separated token may hold a space), any other on runs of whitespace.
The token is in `token_column`, the tag in `tag_column` (default -1, the last; negative columns
count from the end of the line). Every line of a sentence must have as many columns as its first.
`-DOCSTART-` lines (document breaks in CoNLL-2003) are skipped and counted; the blank line after
one is an ordinary sentence break. A line starting with `#` is data here, not a comment: in
CoNLL-2003-style files `#` is a token like any other (`# NN I-NP O`), and only CoNLL-U defines
comments.

CoNLL-U (`read_conllu`): 10 tab-separated columns, FORM the token, UPOS or XPOS the tag. Comment
lines (`#`) are skipped and counted, and so are multi-word token lines (ID `3-4`: their words follow
on lines of their own) and empty nodes (ID `5.1`: enhanced dependencies only). Word IDs must run
1, 2, 3... within a sentence, which catches a missing blank line between two sentences. A tag of
`_` (the treebank has none) is an error rather than a tag.

Files are read with `TextLines` (UTF-8, only "\\n" ends a line, a byte-order mark dropped and
counted in `skipped`). Every error is one `DataError` starting `path:line:` saying what was
expected. The `conllu` package is not used: its errors do not name the line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from elmo_dist.data.reader import TextLines
from elmo_dist.errors import DataError

FORMATS = ("auto", "conll", "conllu")
CONLLU_TAGS = {"upos": 3, "xpos": 4}  # 0-based columns; FORM is column 1
CONLLU_COLUMNS = 10
DOCSTART = "-DOCSTART-"
BOM_DROPPED = "byte_order_mark"  # the same key as the classification readers' `skipped`


@dataclass
class TaggedSet:
    sentences: list[list[str]]
    tags: list[list[str]]
    source: str
    """The file read, for messages."""
    skipped: dict[str, int] = field(default_factory=dict)
    """What was read and left out, by kind: `docstart`, `comment`, `multiword_token`, `empty_node`,
    `byte_order_mark`."""
    first_lines: list[int] = field(default_factory=list)
    """The line each sentence starts on, so that later checks (an unseen tag) can name `source:line`."""

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sentences)


class _Builder:
    """Collects sentences as lines arrive; a blank line (or the end of the file) closes one."""

    def __init__(self, path: Path):
        self.out = TaggedSet(sentences=[], tags=[], source=str(path))
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.start = 0

    def add(self, line_no: int, token: str, tag: str) -> None:
        if not self.tokens:
            self.start = line_no
        self.tokens.append(token)
        self.tags.append(tag)

    def close(self) -> None:
        if self.tokens:
            self.out.sentences.append(self.tokens)
            self.out.tags.append(self.tags)
            self.out.first_lines.append(self.start)
            self.tokens, self.tags = [], []

    def skip(self, kind: str) -> None:
        self.out.skipped[kind] = self.out.skipped.get(kind, 0) + 1

    def finish(self, lines: TextLines, what: str) -> TaggedSet:
        self.close()
        if lines.boms:
            self.out.skipped[BOM_DROPPED] = self.out.skipped.get(BOM_DROPPED, 0) + lines.boms
        if not self.out.sentences:
            raise DataError(f"{self.out.source}: no tagged sentences (expected {what})")
        return self.out


def _columns(line: str) -> list[str]:
    if "\t" in line:
        return [c.strip() for c in line.strip().split("\t")]
    return line.split()


def _n_columns(n: int) -> str:
    return f"{n} column{'' if n == 1 else 's'}"


def _column_index(column: int, n: int) -> int | None:
    """`column` (negative: from the end) as an index into n columns, or None if there is no such column."""
    i = column + n if column < 0 else column
    return i if 0 <= i < n else None


def read_conll(path: str | Path, tag_column: int = -1, token_column: int = 0) -> TaggedSet:
    """The sentences and tags of a CoNLL column file (see the module docstring for the rules)."""
    p = Path(path)
    b, lines = _Builder(p), TextLines(p)
    sentence_cols, first = 0, 0  # the column count of the sentence being read and its first line
    for n, line in enumerate(lines, 1):
        if not line.strip():
            b.close()
            continue
        cols = _columns(line)
        if cols[0] == DOCSTART:
            b.close()
            b.skip("docstart")
            continue
        if not b.tokens:
            sentence_cols, first = len(cols), n
        elif len(cols) != sentence_cols:
            raise DataError(f"{p}:{n}: {_n_columns(len(cols))}, but this sentence's first line ({p}:{first}) "
                            f"has {sentence_cols}; is a blank line missing between two sentences?")
        ti, gi = _column_index(token_column, len(cols)), _column_index(tag_column, len(cols))
        if ti is None or gi is None:
            raise DataError(f"{p}:{n}: expected a token in column {token_column} and a tag in column "
                            f"{tag_column} (counting from 0; negative from the end), got "
                            f"{_n_columns(len(cols))}: {line.strip()!r}")
        if ti == gi:
            raise DataError(f"{p}:{n}: expected a token and a tag, got {_n_columns(len(cols))}, where token "
                            f"column {token_column} and tag column {tag_column} are the same: {line.strip()!r}")
        if not cols[ti] or not cols[gi]:
            raise DataError(f"{p}:{n}: the {'token' if not cols[ti] else 'tag'} column is empty "
                            f"(two tabs in a row?): {line.strip()!r}")
        b.add(n, cols[ti], cols[gi])
    return b.finish(lines, "token and tag columns, a blank line between sentences")


def read_conllu(path: str | Path, tag: str = "upos") -> TaggedSet:
    """The words and UPOS (or XPOS) tags of a CoNLL-U file (see the module docstring for the rules)."""
    if tag not in CONLLU_TAGS:
        raise DataError(f"unknown CoNLL-U tag column {tag!r}; expected one of {', '.join(CONLLU_TAGS)}")
    p, col = Path(path), CONLLU_TAGS[tag]
    b, lines = _Builder(p), TextLines(p)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            b.close()
            continue
        if line.startswith("#"):
            b.skip("comment")
            continue
        cols = line.split("\t")
        if len(cols) != CONLLU_COLUMNS:
            spaces = " (are the columns separated by spaces? CoNLL-U needs tabs)" \
                if len(line.split()) >= CONLLU_COLUMNS else ""
            raise DataError(f"{p}:{n}: expected {CONLLU_COLUMNS} tab-separated columns (CoNLL-U), "
                            f"got {len(cols)}{spaces}")
        word_id = cols[0]
        if "-" in word_id or "." in word_id:  # a multi-word token's range, or an empty node
            b.skip("multiword_token" if "-" in word_id else "empty_node")
            continue
        expected = len(b.tokens) + 1
        if word_id != str(expected):
            hint = "; is a blank line missing before this sentence?" if word_id == "1" else ""
            raise DataError(f"{p}:{n}: word ID {word_id!r}, expected {expected} (IDs run 1, 2, 3... in a "
                            f"sentence; `3-4` is a multi-word token, `5.1` an empty node){hint}")
        form, value = cols[1], cols[col].strip()
        if not form:
            raise DataError(f"{p}:{n}: the FORM (column 2) is empty")
        if value in ("", "_"):
            other = "; the treebank may have no XPOS: try tag='upos'" if tag == "xpos" else ""
            raise DataError(f"{p}:{n}: no {tag.upper()} (column {col + 1} is {cols[col]!r}){other}")
        b.add(n, form, value)
    return b.finish(lines, "CoNLL-U: 10 tab-separated columns, a blank line between sentences")


def detect_format(path: str | Path) -> str:
    """`conllu` for a `.conllu` file, else `conll`."""
    return "conllu" if Path(path).suffix.lower() == ".conllu" else "conll"


def read_tagged(path: str | Path, format: str = "auto", tag_column: int = -1, conllu_tag: str = "upos") -> TaggedSet:
    """A tagged file in either format; `auto` goes by the extension (`.conllu` is CoNLL-U)."""
    if format not in FORMATS:
        raise DataError(f"unknown tagged-data format {format!r}; expected one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "conllu":
        return read_conllu(path, tag=conllu_tag)
    return read_conll(path, tag_column=tag_column)
